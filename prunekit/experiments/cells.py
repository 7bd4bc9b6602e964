"""Cells: the experiment loop over (seed, sparsity, metric, allocation) cells on one loaded
``Session``, shared by ``Session.sweep`` and the grid runners, and the table row of one run."""
from __future__ import annotations

import time

def row(rec: dict, cell: dict) -> dict:
    """The DataFrame row of one run (the columns ``Session.sweep`` has always returned)."""
    out = {} if cell.get("seed") is None else {"seed": cell["seed"]}
    out.update({"allocation": cell["allocation"], "method": cell["method"], "metric": cell["metric"],
                "sparsity": cell["sparsity"], "global_sparsity": rec["global_sparsity"]})
    out.update({f"ppl_{d}": v for d, v in rec.get("perplexity", {}).items()})
    out.update({f"nll_{d}": v for d, v in rec.get("window_nll", {}).items()})
    if rec.get("zero_shot"):
        out["zero_shot_mean"] = rec["zero_shot"].get("mean_acc")
    out.update(planned=rec["planned_sparsity"], allocate_s=rec["timings_s"]["allocate"])
    return out


def expand(allocations, metrics, sparsities, seeds=None, options: dict | None = None):
    """``Session.sweep``'s cells: (cells, skipped). ``allocations`` is a list of names or a dict
    ``label -> (method, options)``; ``options`` maps a method to default options; unregistered
    methods are skipped (and listed)."""
    from prunekit.allocation.registry import methods
    options = options or {}
    variants = allocations if isinstance(allocations, dict) else {a: (a, {}) for a in allocations}
    known = methods()
    skipped = sorted({m for m, _ in variants.values() if m not in known})
    cells = [{"seed": seed, "sparsity": s, "metric": mt, "allocation": lab, "method": m,
              "options": {**options.get(m, {}), **opts}}
             for seed in (seeds if seeds is not None else [None]) for s in sparsities for mt in metrics
             for lab, (m, opts) in variants.items() if m in known]
    return cells, skipped


def iter_session(session, cells, run_kw: dict | None = None, on_run=None):
    """Run ``cells`` on one loaded ``Session`` in order, reseeding when a cell's seed changes;
    yields (cell, record, row). The in-process loop behind ``Session.sweep`` and the grid runner."""
    run_kw = run_kw or {}
    try:
        for cell in cells:
            seed = cell.get("seed")
            if seed is not None and seed != session.seed:
                session.reseed(seed)
            t0 = time.perf_counter()
            rec = session.run(cell["method"], cell["metric"], cell["sparsity"], options_=dict(cell["options"]),
                              **run_kw)
            r = row(rec, cell)
            if on_run is not None:
                on_run(rec, r)
            r["seconds"] = time.perf_counter() - t0
            yield cell, rec, r
    finally:
        session.restore()
