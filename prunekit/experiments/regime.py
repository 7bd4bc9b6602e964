"""The papers' regime: degradation-matched sparsity s* and choices settled on held-out data.

The papers' claims are about LLaMA-7B at 70 %, where uniform Wanda is 15.1 × its dense perplexity
(85.77 / 5.68) and uniform SparseGPT 4.6 × (26.30 / 5.68). A small model collapses far earlier, so
the same *sparsity* is a different *damage*. ``s*`` is the sparsity at which the uniform solver's
perplexity ÷ dense perplexity on held-out C4 windows (drawn from the calibration pool, disjoint from
the pruning samples; never the test set) equals the paper's ratio, found by bisection to ± ``tol``.

    python -m prunekit.experiments.regime sstar --model smollm2-135m --metrics wanda,sparsegpt \\
        --out docs/data/regime/sstar.json
    python -m prunekit.experiments.regime mrp-score --model smollm2-135m --sparsities 0.7 \\
        --out docs/data/regime/mrp_score.jsonl

Both commands are resumable: every measured point is written (atomically) as soon as it exists and
read back on a rerun with the same settings.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from prunekit.errors import PrunekitError, guarded
from prunekit.utils import atomic_write_json

# The papers' LLaMA-7B numbers at 70 % (WikiText-2): dense 5.68, uniform Wanda 85.77, uniform SparseGPT 26.30.
PAPER_DENSE = 5.68
PAPER_AT_70 = {"wanda": 85.77, "sparsegpt": 26.30}
PAPER_RATIO = {m: v / PAPER_DENSE for m, v in PAPER_AT_70.items()}
TOL = 0.01


def bisect_sparsity(ratio_at: Callable[[float], float], target: float, lo: float = 0.5, hi: float = 0.7,
                    tol: float = TOL, step: float = 0.1, s_min: float = 0.05, s_max: float = 0.95) -> dict:
    """The sparsity where the increasing function ``ratio_at`` crosses ``target``, to ± ``tol``.

    Works on the lattice of multiples of ``tol`` (so every evaluated sparsity is a grid point of a
    brute-force scan with that step): the bracket [lo, hi] is widened by ``step`` (within [s_min,
    s_max]) until ratio_at(lo) < target <= ratio_at(hi), then halved until lo and hi are adjacent
    lattice points; s* is their midpoint (within tol/2 of the crossing when the function is
    monotone). Returns s_star, lo, hi, target, tol and the curve (every evaluated (sparsity,
    ratio), sorted by sparsity)."""
    if not (target > 0 and math.isfinite(target)):
        raise PrunekitError(f"target ratio must be a positive number, got {target}")
    if not (0 < tol < 0.5) or not (s_min <= lo < hi <= s_max):
        raise PrunekitError(f"need 0 < tol < 0.5 and {s_min} <= lo < hi <= {s_max}; got tol={tol}, [{lo}, {hi}]")
    seen: dict[int, float] = {}

    def idx(s):
        return int(round(s / tol))

    def f(i):
        if i not in seen:
            seen[i] = float(ratio_at(round(i * tol, 6)))
        return seen[i]

    lo_i, hi_i, step_i = idx(lo), idx(hi), max(1, idx(step))
    min_i, max_i = int(math.ceil(s_min / tol - 1e-9)), int(math.floor(s_max / tol + 1e-9))
    while f(lo_i) >= target:
        if lo_i <= min_i:
            raise PrunekitError(f"the ratio is already {f(lo_i):.3g} >= {target:.3g} at sparsity {lo_i * tol:.3f}")
        lo_i, hi_i = max(min_i, lo_i - step_i), lo_i
    while f(hi_i) < target:
        if hi_i >= max_i:
            raise PrunekitError(f"the ratio is only {f(hi_i):.3g} < {target:.3g} at sparsity {hi_i * tol:.3f}")
        lo_i, hi_i = hi_i, min(max_i, hi_i + step_i)
    while hi_i - lo_i > 1:
        mid = (lo_i + hi_i) // 2
        if f(mid) < target:
            lo_i = mid
        else:
            hi_i = mid
    lo, hi = round(lo_i * tol, 6), round(hi_i * tol, 6)
    return {"s_star": round((lo + hi) / 2, 6), "lo": lo, "hi": hi, "target": target, "tol": tol,
            "curve": [{"sparsity": round(i * tol, 6), "ratio": r} for i, r in sorted(seen.items())]}


def heldout_ids(session, samples: int, seqlen: int, seed_offset: int = 1000):
    """Held-out C4 windows from the calibration pool, disjoint from the session's pruning samples,
    drawn with seed calib.seed + ``seed_offset`` (not the test split)."""
    from prunekit.core.data import heldout_set
    return heldout_set(session.calib, session.tokenizer, samples, seqlen,
                       seed=session.calib.seed + seed_offset).input_ids


def heldout_nll_of(session, ids) -> float:
    from prunekit.experiments.mrp_selection import heldout_nll
    return heldout_nll(session.runtime, ids)


def _load(path: Path, must_exist: bool = False) -> dict:
    from prunekit.utils import read_regular
    try:
        doc = json.loads(read_regular(path))
    except FileNotFoundError:
        if must_exist:
            raise PrunekitError(f"{path} does not exist; give --sstar-file, or measure s* first with the sstar subcommand") from None
        return {"entries": {}}
    except ValueError as e:
        raise PrunekitError(f"{path} is not JSON ({e}); move it away to start again") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), dict):
        raise PrunekitError(f"{path} is not a study file of this module (no 'entries' object); move it away to start again")
    return doc


def _numbers(text: str, flag: str, kind=int, lo=0.0, hi=math.inf) -> list:
    """``--seeds 0,1,2`` / ``--sparsities 0.7,0.65``: a one-line error for anything but a list of numbers in range."""
    try:
        vals = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        vals = []
    if not vals or any(not (lo <= v < hi) or (kind is float and not math.isfinite(v)) for v in vals):
        what = "integers >= 0" if kind is int else f"numbers in ({lo:g}, {hi:g})"
        raise PrunekitError(f"{flag} '{text}' must be comma-separated {what}")
    return vals


def _preflight(a) -> None:
    """Every argument checked before a model loads: numbers, names, the model's files, the output path."""
    from prunekit.core.devices import pick_dtype
    from prunekit.core.loading import peek_model
    from prunekit.utils import check_writable
    from prunekit.vocabulary import METRICS
    check_writable(a.out, "--out")
    if a.cmd in ("accuracy", "mrp-score") or getattr(a, "seeds", ""):  # parsed once here; the commands read lists
        a.seeds = _numbers(a.seeds, "--seeds")
    if a.cmd == "mrp-score":
        a.sparsities = _numbers(a.sparsities, "--sparsities", float, 1e-9, 1.0)
        a.configs = [c for c in a.configs.split(",") if c]
        bad = [c for c in a.configs if c not in MRP_CONFIGS] or ([] if a.configs else [""])
        if bad:
            raise PrunekitError(f"unknown config '{bad[0]}'; choose from {', '.join(MRP_CONFIGS)}")
    for flag in ("seed", "calib_samples", "calib_seqlen", "heldout_samples", "heldout_seqlen", "limit"):
        v = getattr(a, flag, None)
        if v is not None and v < (0 if flag == "seed" else 1):
            raise PrunekitError(f"--{flag.replace('_', '-')} {v} must be >= {0 if flag == 'seed' else 1}")
    if getattr(a, "tol", None) is not None and not (0 < a.tol < 0.5):
        raise PrunekitError(f"--tol {a.tol} must lie in (0, 0.5)")
    wanted = [m for m in (getattr(a, "metrics", "") or getattr(a, "metric", "")).split(",") if m]
    known = PAPER_RATIO if a.cmd == "sstar" else METRICS
    bad = [m for m in wanted if m not in known]
    if bad or not wanted:
        raise PrunekitError(f"unknown metric {', '.join(map(repr, bad or ['']))}; choose from {', '.join(known)}")
    if getattr(a, "dtype", None):
        import torch
        pick_dtype(a.dtype, torch.device("cpu"))
    if getattr(a, "sparsity", None) is not None and not 0.0 < a.sparsity < 1.0:
        raise PrunekitError(f"--sparsity {a.sparsity} must lie in (0, 1)")
    if (getattr(a, "sstar_file", None) and getattr(a, "at", "sstar") == "sstar"
            and getattr(a, "sparsity", None) is None):
        sstar = sstar_values(_load(Path(a.sstar_file), must_exist=True)["entries"])
        missing = [m for m in wanted if m not in sstar.get(a.model, {})]
        if missing:
            raise PrunekitError(f"{a.sstar_file} has no s* for {a.model} / {', '.join(missing)}")
    peek_model(a.model)


def find_s_star(session, metric: str, ho, store: dict | None = None, on_point=None, lo: float = 0.5,
                hi: float = 0.7, tol: float = TOL, also=(0.7,), target: float | None = None) -> dict:
    """s* of ``metric`` on the session's model: uniform prunes at the bisection's sparsities, each
    read as exp(held-out NLL − dense held-out NLL). ``store`` (dict) memoises measured points across
    reruns; ``also`` adds points to the curve (70 %, the paper's sparsity); ``target`` overrides the
    paper's ratio."""
    store = {} if store is None else store
    pts = store.setdefault("points", {})
    if "dense_nll" not in store:
        session.restore()
        store["dense_nll"] = heldout_nll_of(session, ho)
    dense = store["dense_nll"]

    def ratio(s):
        key = f"{s:.6f}"
        if key not in pts:
            t0 = time.perf_counter()
            session.run("uniform", metric, s, evaluate=False)
            nll = heldout_nll_of(session, ho)
            pts[key] = {"sparsity": s, "nll": nll, "ratio": math.exp(nll - dense),
                        "seconds": time.perf_counter() - t0}
            session.restore()
            if on_point is not None:
                on_point(pts[key])
        return pts[key]["ratio"]

    target = PAPER_RATIO[metric] if target is None else float(target)
    res = bisect_sparsity(ratio, target, lo, hi, tol)
    for s in also:
        ratio(float(s))
    res["curve"] = [{k: v[k] for k in ("sparsity", "ratio", "nll", "seconds")}
                    for v in sorted(pts.values(), key=lambda p: p["sparsity"])]
    res.update(metric=metric, dense_nll=dense, paper_ratio=PAPER_RATIO.get(metric))
    return res


def sstar_values(entries: dict, dtype: str = "default", seed: int = 0) -> dict:
    """{model: {solver: s*}} from the entries of an s* file (``sstar.json``)."""
    out: dict = {}
    for key, e in entries.items():
        model, metric, sd, dt = key.split("|")
        if "s_star" in e and dt == dtype and sd == f"seed{seed}":
            out.setdefault(model, {})[metric] = float(e["s_star"])
    return out


def sstar_for(path, models) -> dict:
    """``{model: {metric: s*}}`` (seed 0, default dtype) from an s* file, checked before any run:
    a missing or foreign file, or a model without an s*, is a one-line error."""
    sstar = sstar_values(_load(Path(path), must_exist=True)["entries"])
    missing = [m for m in models if m not in sstar]
    if missing:
        raise PrunekitError(f"{path} has no s* for {', '.join(missing)}; measure it with the sstar subcommand")
    return {m: sstar[m] for m in models}


def claims_at(sstar: dict, claims=None) -> list:
    """The claims made at 70 % moved to the solver's s* (``sstar``: solver -> s*); claims at other
    sparsities, or whose solver has no s*, are left out. Claim texts are kept, so that the rows of
    both regimes line up."""
    from dataclasses import replace

    from prunekit.experiments.comparison import CLAIMS
    return [replace(c, sparsity=sstar[c.metric]) for c in (CLAIMS if claims is None else claims)
            if abs(c.sparsity - 0.7) < 1e-9 and c.metric in sstar]


def groups_at(groups: list[dict], sstar: dict) -> list[dict]:
    """Notebook 50's run groups at 70 % repeated at the solver's s* (``sstar``: solver -> s*)."""
    return [{**g, "sparsity": sstar[g["metric"]]} for g in groups
            if abs(float(g["sparsity"]) - 0.7) < 1e-9 and g["metric"] in sstar]


def regime_matrix(df: pd.DataFrame, sstar: dict, n_boot: int = 4000) -> pd.DataFrame:
    """The reproduction matrix with a column per model × regime (70 % and s*): one row per 70 %
    claim, each cell "Δ % [lo, hi] verdict" (``comparison.reproduction_matrix``). ``sstar``:
    {model: {solver: s*}}."""
    from prunekit.experiments import comparison
    return comparison.reproduction_matrix(regime_table(df, sstar, n_boot))


def regime_table(df: pd.DataFrame, sstar: dict, n_boot: int = 4000) -> pd.DataFrame:
    """``regime_matrix`` in long form: one row per 70 % claim × model × regime, ``model`` labelled
    "<model> @ 70 %" or "<model> @ s*"."""
    from prunekit.experiments import comparison
    parts = []
    for model in dict.fromkeys(df["model"]):
        sub = df[df["model"] == model]
        at70 = [c for c in comparison.CLAIMS if abs(c.sparsity - 0.7) < 1e-9]
        parts.append(comparison.reproduction_table(sub, at70, n_boot).assign(model=f"{model} @ 70 %"))
        if model in sstar:
            parts.append(comparison.reproduction_table(sub, claims_at(sstar[model]), n_boot)
                         .assign(model=f"{model} @ s*"))
    return pd.concat(parts, ignore_index=True)


def _session(model, seed, dtype=None, calib_samples=8, calib_seqlen=256):
    from prunekit.experiments.session import Session
    return Session(model, calib_samples=calib_samples, calib_seqlen=calib_seqlen, seed=seed,
                   eval_datasets=("wikitext2",), eval_seqlen=1024, eval_windows=16, dtype=dtype, progress=False)


def cmd_sstar(a) -> int:
    out = Path(a.out)
    doc = _load(out)
    sess = None
    for metric in [m for m in a.metrics.split(",") if m]:
        if metric not in PAPER_RATIO:
            raise PrunekitError(f"no paper ratio for '{metric}'; choose from {', '.join(PAPER_RATIO)}")
        key = f"{a.model}|{metric}|seed{a.seed}|{a.dtype or 'default'}"
        entry = doc["entries"].setdefault(key, {})
        if "s_star" in entry:
            print(f"{key}: s* = {entry['s_star']} (kept)")
            continue
        if sess is None:
            sess = _session(a.model, a.seed, a.dtype, a.calib_samples, a.calib_seqlen)
            ho = heldout_ids(sess, a.heldout_samples, a.heldout_seqlen)
        settings = {"model": a.model, "metric": metric, "seed": a.seed, "dtype": sess.runtime.precision,
                    "calibration": f"c4 {a.calib_samples} x {a.calib_seqlen}",
                    "heldout": f"c4 {a.heldout_samples} x {a.heldout_seqlen}, calibration pool, disjoint, seed+1000"}
        if entry.get("settings", settings) != settings:
            raise PrunekitError(f"{out}: {key} was measured with other settings; use another --out")
        entry["settings"] = settings

        def save(pt, key=key):
            print(f"{key}: s={pt['sparsity']:.4f} ratio={pt['ratio']:.3f} ({pt['seconds']:.0f} s)", flush=True)
            atomic_write_json(out, doc)

        res = find_s_star(sess, metric, ho, entry, save, tol=a.tol)
        entry.update(res)
        atomic_write_json(out, doc)
        print(f"{key}: s* = {res['s_star']} (target ratio {res['target']:.2f})", flush=True)
    return 0


MRP_CONFIGS = ("uniform", "mrp[score=solver]", "mrp[score=wanda]")


def cmd_mrp_score(a) -> int:
    """Held-out NLL of MRP with the solver's own score vs Wanda's score (and uniform) per seed."""
    from prunekit.utils import read_jsonl
    out = Path(a.out)
    try:
        done = {(r["model"], r["seed"], r["config"], round(r["sparsity"], 6)) for r in read_jsonl(out)}
    except (KeyError, TypeError):
        raise PrunekitError(f"{out} is not an mrp-score results file; use another --out") from None
    for seed in a.seeds:
        sess = None
        for s in a.sparsities:
            for config in a.configs:
                if (a.model, seed, config, round(s, 6)) in done:
                    continue
                if sess is None:
                    sess = _session(a.model, seed, a.dtype)
                    ho = heldout_ids(sess, a.heldout_samples, a.heldout_seqlen, seed_offset=1)
                t0 = time.perf_counter()
                if config == "uniform":
                    rec = sess.run("uniform", a.metric, s, evaluate=False)
                else:
                    score = a.metric if "solver" in config else "wanda"
                    rec = sess.run("mrp", a.metric, s, evaluate=False, score=score)
                row = {"model": a.model, "seed": seed, "metric": a.metric, "sparsity": s, "config": config,
                       "heldout_nll": heldout_nll_of(sess, ho), "dtype": sess.runtime.precision,
                       "heldout": f"c4 {a.heldout_samples} x {a.heldout_seqlen}, seed+1, disjoint",
                       "calibration": "c4 8 x 256",
                       "block_min": float(np.min(rec["planned_sparsity"])),
                       "block_max": float(np.max(rec["planned_sparsity"])),
                       "planned_sparsity": rec["planned_sparsity"], "seconds": time.perf_counter() - t0}
                sess.restore()
                from prunekit.experiments.sweep.store import append_record
                append_record(out, row)  # O_NOFOLLOW, never blocks on a FIFO, fsynced
                print(json.dumps({k: v for k, v in row.items() if k != "planned_sparsity"}), flush=True)
    return 0


def mrp_score_table(rows) -> pd.DataFrame:
    """Per (model, sparsity): mean held-out NLL of each config over seeds, the paired difference
    wanda − solver score with its per-seed values, and the choice (lower mean NLL)."""
    df = pd.DataFrame(rows)
    out = []
    for (model, s), g in df.groupby(["model", "sparsity"]):
        w = g.pivot_table(index="seed", columns="config", values="heldout_nll")
        if not {"mrp[score=solver]", "mrp[score=wanda]"} <= set(w.columns):
            continue
        w = w.dropna(subset=["mrp[score=solver]", "mrp[score=wanda]"])
        d = w["mrp[score=wanda]"] - w["mrp[score=solver]"]
        out.append({"model": model, "sparsity": s, "seeds": len(w),
                    "uniform": w["uniform"].mean() if "uniform" in w else np.nan,
                    "solver_score": w["mrp[score=solver]"].mean(), "wanda_score": w["mrp[score=wanda]"].mean(),
                    "wanda_minus_solver": d.mean(), "per_seed": [round(x, 4) for x in d],
                    "wanda_better_seeds": int((d < 0).sum())})
    return pd.DataFrame(out)


def cmd_claims(a) -> int:
    """Notebook 50's 70 % runs of ``--metric`` at the model's s* (or, ``--at 70``, again at 70 %) through
    the grid runner (resumable
    through ``--out``, the same JSON-lines file notebook 50 reads with ``results=``)."""
    from prunekit.experiments.comparison import run_grid
    from prunekit.experiments.profiles import _CPU_GROUPS
    sstar = sstar_values(_load(Path(a.sstar_file))["entries"]) if a.at == "sstar" else {a.model: {}}
    keep = [x for x in a.allocations.split(",") if x]
    labels = {x for g in _CPU_GROUPS for x in g["allocations"]}
    if set(keep) - labels:
        raise PrunekitError(f"unknown allocation {sorted(set(keep) - labels)[0]!r}; choose from {', '.join(sorted(labels))}")
    at = (groups_at(_CPU_GROUPS, sstar[a.model]) if a.at == "sstar"
          else [g for g in _CPU_GROUPS if abs(float(g["sparsity"]) - 0.7) < 1e-9])
    groups = [{**g, "allocations": [x for x in g["allocations"] if not keep or x in keep]}
              for g in at if g["metric"] in a.metrics.split(",")]
    groups = [g for g in groups if g["allocations"]]
    if not groups:
        raise PrunekitError(f"no run group of the grid has --metrics {a.metrics} with --allocations {a.allocations or 'all'}")
    print(f"{a.model}: {groups}", flush=True)
    df = run_grid("comparison-cpu", results=a.out, models=[a.model], groups=groups, seeds=a.seeds or None,
                  dtype=a.dtype)
    print(df[["allocation", "metric", "sparsity", "seed", "ppl_wikitext2"]].to_string(), flush=True)
    return 0


def cmd_accuracy(a) -> int:
    """The accuracy column's runs (``accuracy.run_accuracy``) at the solver's s* of the model, or at
    ``--sparsity`` (a lower one, where the models still answer the tasks)."""
    from prunekit.experiments import accuracy
    sp = a.sparsity if a.sparsity is not None else sstar_values(_load(Path(a.sstar_file))["entries"])[a.model][a.metric]
    configs = [x for x in a.configs.split(",") if x] or list(accuracy.CONFIGS)
    accuracy.run_accuracy(a.model, sp, a.out, a.seeds,
                          a.limit, a.metric, configs, log=lambda m: print(m, flush=True))
    return 0


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m prunekit.experiments.regime")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("sstar", help="degradation-matched sparsity per solver")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--metrics", default="wanda,sparsegpt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default=None)
    p.add_argument("--calib-samples", type=int, default=8)
    p.add_argument("--calib-seqlen", type=int, default=256)
    p.add_argument("--heldout-samples", type=int, default=16)
    p.add_argument("--heldout-seqlen", type=int, default=256)
    p.add_argument("--tol", type=float, default=TOL)
    p.add_argument("--out", required=True)
    q = sub.add_parser("mrp-score", help="MRP with the solver's score vs Wanda's, on held-out NLL")
    q.add_argument("--model", default="smollm2-135m")
    q.add_argument("--metric", default="sparsegpt")
    q.add_argument("--seeds", default="0,1,2")
    q.add_argument("--sparsities", default="0.7")
    q.add_argument("--dtype", default=None)
    q.add_argument("--configs", default=",".join(MRP_CONFIGS))
    q.add_argument("--heldout-samples", type=int, default=4)
    q.add_argument("--heldout-seqlen", type=int, default=256)
    q.add_argument("--out", required=True)
    c = sub.add_parser("claims", help="notebook 50's 70 % runs at s* (grid runner)")
    c.add_argument("--model", default="smollm2-135m")
    c.add_argument("--sstar-file", default="docs/data/regime/sstar.json")
    c.add_argument("--metrics", default="wanda,sparsegpt")
    c.add_argument("--allocations", default="", help="comma-separated labels to keep (default: all)")
    c.add_argument("--seeds", default="", help="comma-separated seeds (default: the grid's 0, 1, 2)")
    c.add_argument("--at", choices=("sstar", "70"), default="sstar",
                   help="run the groups at s* (default) or again at 70 %% (e.g. after a default changed)")
    c.add_argument("--dtype", default=None, help="compute dtype of every run (default: the device's; "
                   "give each dtype its own --out)")
    c.add_argument("--out", required=True)
    z = sub.add_parser("accuracy", help="zero-shot accuracy of the accuracy claims' runs at s*")
    z.add_argument("--model", default="smollm2-135m")
    z.add_argument("--sstar-file", default="docs/data/regime/sstar.json")
    z.add_argument("--metric", default="wanda")
    z.add_argument("--seeds", default="0,1,2")
    z.add_argument("--sparsity", type=float, default=None, help="prune at this sparsity instead of the model's s*")
    z.add_argument("--limit", type=int, default=300, help="first N documents of every task")
    z.add_argument("--configs", default="", help="comma-separated labels (default: all five)")
    z.add_argument("--out", required=True)
    return guarded("regime", run, ap.parse_args(argv))


def run(a) -> int:
    _preflight(a)
    return {"sstar": cmd_sstar, "mrp-score": cmd_mrp_score, "claims": cmd_claims, "accuracy": cmd_accuracy}[a.cmd](a)


if __name__ == "__main__":
    raise SystemExit(main())
