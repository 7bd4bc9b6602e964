"""Choosing MRP's defaults by evidence: every reading × M on held-out calibration NLL, never on the
test set (docs/methods.md §1).

Held-out set: windows of the calibration dataset drawn with seed + 1 and disjoint from the pruning
samples (``svnup.game.heldout_data``). The selection criterion is the mean next-token NLL of the
pruned model on those windows, averaged over the sparsities of the study; test-set perplexities are
recorded beside it for the report only.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd

from prunekit.allocation.mrp import READINGS  # the one vocabulary of MRP readings
from prunekit.allocation.svnup.game import heldout_data
from prunekit.evaluation.perplexity import window_nlls

MS = (3.0, 5.0, 7.0)
BASELINES = {"uniform": ("uniform", {}), "owl": ("owl", {}), "alphapruning": ("alphapruning", {})}


def candidates(readings=READINGS, ms=MS, baselines=("uniform", "owl", "alphapruning"), other_ms=(5.0,)) -> dict:
    """label -> (method, options): the baselines first, then MRP's reading "current" × ``ms`` and the
    other readings × ``other_ms`` (their known failure mode does not depend on M; docs/methods.md §1)."""
    out = {b: BASELINES[b] for b in baselines}
    for r in readings:
        for m in (ms if r == "current" else other_ms):
            out[f"mrp[{r},M={m:g}]"] = ("mrp", {"reading": r, "m": float(m)})
    return out


def heldout_nll(model, ids) -> float:
    """Mean next-token NLL over held-out windows ``ids`` (n, seqlen)."""
    n, t = ids.shape
    return float(window_nlls(model, ids.reshape(1, -1), t, progress=False).mean())


def study(session, sparsities=(0.7, 0.6, 0.5), configs: dict | None = None, metric: str = "wanda",
          heldout_samples: int = 4, heldout_seqlen: int | None = None, test_at=None, on_row=None) -> pd.DataFrame:
    """One row per (sparsity, config): held-out NLL (the criterion), test perplexities (only at the
    sparsities in ``test_at``; None = all), plan spread. Sparsity is the outer loop so that a cut
    run leaves complete comparisons."""
    configs = configs or candidates()
    ho = heldout_data(session.stats, heldout_samples, heldout_seqlen).input_ids
    rows = []
    for s in sparsities:
        for label, (method, opts) in configs.items():
            t0 = time.perf_counter()
            test = test_at is None or any(abs(s - x) < 1e-9 for x in test_at)
            rec = session.run(method, metric, s, evaluate=test, **opts)
            row = {"model": session.model_name, "config": label, "method": method, "metric": metric,
                   "sparsity": s, "heldout_nll": heldout_nll(session.runtime, ho),
                   **{f"ppl_{d}": v for d, v in rec.get("perplexity", {}).items()},
                   "block_min": float(np.min(rec["planned_sparsity"])),
                   "block_max": float(np.max(rec["planned_sparsity"])),
                   "seconds": time.perf_counter() - t0}
            rows.append(row)
            if on_row is not None:
                on_row(row)
    session.restore()
    df = pd.DataFrame(rows)
    df.attrs["heldout"] = {"samples": int(ho.shape[0]), "seqlen": int(ho.shape[1])}
    return df


def choose(df: pd.DataFrame) -> pd.DataFrame:
    """Rank the MRP configurations by mean held-out NLL (lower is better) over the (model, sparsity)
    cells that every configuration has (complete cases, so a configuration is never ranked on fewer or
    easier cells than another); baselines are listed for comparison. Columns: config,
    mean_heldout_nll, per-(model, sparsity) NLLs, cells (how many were averaged), mrp_rank."""
    wide = df.pivot_table(index="config", columns=["model", "sparsity"], values="heldout_nll")
    wide.columns = [f"{m}@{s:g}" for m, s in wide.columns]
    common = wide.columns[wide.notna().all(axis=0)]
    out = wide.assign(mean_heldout_nll=wide[common].mean(axis=1), cells=len(common))
    out = out.sort_values("mean_heldout_nll")
    is_mrp = out.index.str.startswith("mrp[")
    out["mrp_rank"] = np.where(is_mrp, out["mean_heldout_nll"].where(is_mrp).rank(), np.nan)
    return out.reset_index()


def beats_baselines(df: pd.DataFrame, config: str, baselines=("uniform", "owl", "alphapruning")) -> pd.DataFrame:
    """Per (model, sparsity): held-out NLL of ``config`` minus the best baseline (negative = better)."""
    g = df.pivot_table(index=["model", "sparsity"], columns="config", values="heldout_nll")
    best = g[[b for b in baselines if b in g]].min(axis=1)
    return pd.DataFrame({"config": config, "nll": g[config], "best_baseline_nll": best,
                         "diff": g[config] - best}).reset_index()


def main(argv=None) -> int:
    """``python -m prunekit.experiments.mrp_selection --model smollm2-135m --out rows.jsonl``:
    the study at the issue's sizes (C4 8 × 256 calibration, seed 0; 4 × 256 held-out; WikiText-2
    2 × 1024 test windows recorded beside), one JSON line per run."""
    import argparse
    import json

    from prunekit.experiments.session import Session
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", required=True)
    ap.add_argument("--sparsities", default="0.7,0.6,0.5")
    ap.add_argument("--test-at", default="0.7", help="sparsities with a WikiText-2 test perplexity (report only)")
    ap.add_argument("--readings", default=",".join(READINGS))
    ap.add_argument("--ms", default=",".join(f"{m:g}" for m in MS))
    ap.add_argument("--baselines", default="uniform,owl,alphapruning")
    a = ap.parse_args(argv)
    sess = Session(a.model, calib_samples=8, calib_seqlen=256, seed=0, eval_datasets=("wikitext2",),
                   eval_seqlen=1024, eval_windows=2, progress=False)
    cfg = candidates([r for r in a.readings.split(",") if r], [float(m) for m in a.ms.split(",")],
                     [b for b in a.baselines.split(",") if b])

    def write(row):
        from prunekit.experiments.sweep.store import append_record
        append_record(a.out, row)  # O_NOFOLLOW, never blocks on a FIFO, fsynced
        print(json.dumps(row), flush=True)

    study(sess, [float(s) for s in a.sparsities.split(",")], cfg, heldout_samples=4, heldout_seqlen=256,
          test_at=[float(x) for x in a.test_at.split(",") if x], on_row=write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
