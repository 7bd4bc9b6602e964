"""The grand comparison: every registered allocation × metric × sparsity over several calibration
seeds, and the reproduction table of the three papers' headline claims (plus the baselines').

A claim compares configuration A with configuration B (or the best of several B) at one setting,
paired: same seed, same calibration set, same evaluation windows. Per seed s the relative
perplexity change is ``Δ_s = exp(mean_w nll_A[s, w] − mean_w nll_B[s, w]) − 1`` (= ppl_A/ppl_B − 1,
with ``nll[s, w]`` the mean next-token NLL of evaluation window w); the claim's effect is the mean
over seeds. Its 95 % interval comes from a two-stage paired bootstrap (``paired_bootstrap``): each
replicate draws the seeds with replacement and, independently, the evaluation windows with
replacement, and applies the same draw to A and B. (``scipy.stats.bootstrap`` resamples one axis of
paired observations; the seeds × windows design is crossed, and resampling only flattened cells
would ignore that all seeds share the windows, so the resample is written out here.) The verdict
reads the interval: ``reproduced`` when it lies entirely on the paper's side of 0, ``contradicted``
when it lies entirely on the other side, ``inconclusive`` when it contains 0. The paper's magnitude
is shown beside ours, not judged: our models and data are far smaller than the papers'.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from prunekit.allocation.registry import methods
from prunekit.errors import PrunekitError
from prunekit.experiments.profiles import COMPARISON, COMPARISON_METHOD_OPTIONS
from prunekit.experiments.profiles import profile as check_profile

BASE_METHODS = ("uniform", "owl", "alphapruning", "atp", "mrp", "svnup")
CORRECTED = ("owl", "alphapruning")  # the absorption paper corrects these two


def configurations(available: dict | None = None) -> list[tuple[str, str, dict]]:
    """(label, registered method, options) for every registered allocation; the absorption
    correction appears as ``absorption(owl)`` / ``absorption(alphapruning)``."""
    available = methods() if available is None else available
    out = [(m, m, {}) for m in BASE_METHODS if m in available]
    if "absorption" in available:
        out += [(f"absorption({b})", "absorption", {"base": b}) for b in CORRECTED if b in available]
    return out


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds of every numeric column, per (allocation, metric, sparsity)."""
    value_cols = [c for c in df.columns if c.startswith("ppl_") or c == "zero_shot_mean"]
    keys = (["model"] if "model" in df else []) + ["allocation", "metric", "sparsity"]
    g = df.groupby(keys)[value_cols]
    out = g.mean().add_suffix("_mean").join(g.std(ddof=1).add_suffix("_std"))
    out["seeds"] = g.size()
    return out.reset_index()


@dataclass
class Claim:
    paper: str
    text: str
    a: str            # allocation label of the method
    b: str | tuple    # baseline label, or several (the best of them per seed)
    metric: str
    sparsity: float
    paper_change: float | None  # relative ppl change the paper reports (negative = better)
    source: str       # where the number comes from (docs/methods.md section / tag)
    quantity: str = "ppl_wikitext2"


CLAIMS = [
    Claim("Wanda", "Wanda beats magnitude at 50 % (LLaMA-7B 7.26 vs 17.29)", "uniform", "uniform",
          "wanda", 0.5, 7.26 / 17.29 - 1, "§6 [R]"),
    Claim("OWL", "OWL + Wanda beats uniform Wanda at 70 % (LLaMA-7B 24.55 vs 85.77)", "owl", "uniform",
          "wanda", 0.7, 24.55 / 85.77 - 1, "§4 [V-code]"),
    Claim("OWL", "OWL + SparseGPT beats uniform SparseGPT at 70 % (LLaMA-7B 19.49 vs 26.30)", "owl", "uniform",
          "sparsegpt", 0.7, 19.49 / 26.30 - 1, "§4 [V-code]"),
    Claim("AlphaPruning", "AlphaPruning + Wanda beats uniform Wanda at 70 % (LLaMA-7B ≈23.9 vs 85.77)",
          "alphapruning", "uniform", "wanda", 0.7, 23.9 / 85.77 - 1, "§5 [R]"),
    Claim("MRP", "MRP beats previous allocations (best of OWL / AlphaPruning) at 70 % with Wanda", "mrp",
          ("owl", "alphapruning"), "wanda", 0.7, None, "§1 [V-paper, qualitative]"),
    Claim("MRP", "MRP beats previous allocations (best of OWL / AlphaPruning) at 70 % with SparseGPT", "mrp",
          ("owl", "alphapruning"), "sparsegpt", 0.7, None, "§1 [V-paper, qualitative]"),
    Claim("SV-NUP", "SV-NUP + SparseGPT: −18.01 % perplexity vs uniform SparseGPT at 70 % (LLaMA-7B)", "svnup",
          "uniform", "sparsegpt", 0.7, -0.1801, "§2 [V-paper]"),
    Claim("Absorption", "Absorption correction of OWL: −7.13 % perplexity at 70 % (avg. over methods/families)",
          "absorption(owl)", "owl", "wanda", 0.7, -0.0713, "§3 [V-paper]"),
    Claim("Absorption", "Absorption correction of AlphaPruning: −7.13 % perplexity at 70 % (avg.)",
          "absorption(alphapruning)", "alphapruning", "wanda", 0.7, -0.0713, "§3 [V-paper]"),
]


BOOTSTRAP_REPLICATES = 4000
CONFIDENCE = 0.95


def _cells(df: pd.DataFrame, label: str, metric: str, sparsity: float, quantity: str) -> pd.Series:
    """seed -> per-window NLL array of one configuration (``nll_<dataset>`` lists when the sweep
    recorded them; otherwise one pseudo-window log(ppl) per seed, so the bootstrap runs over seeds)."""
    sel = df[(df.allocation == label) & (df.metric == metric) & np.isclose(df.sparsity, sparsity)]
    nll_col = quantity.replace("ppl_", "nll_", 1)
    if nll_col in sel and sel[nll_col].notna().all() and len(sel):
        return sel.set_index("seed")[nll_col].map(lambda v: np.asarray(v, dtype=float))
    if quantity in sel and len(sel):
        return sel.set_index("seed")[quantity].dropna().map(lambda v: np.log(np.array([float(v)])))
    return pd.Series(dtype=object)


def paired_bootstrap(a, b, n_boot: int = BOOTSTRAP_REPLICATES, seed: int = 0,
                     confidence: float = CONFIDENCE) -> dict:
    """Mean relative perplexity change of A vs B with a percentile bootstrap interval.

    ``a``: (S, W) per-window NLLs of A for S seeds and W windows shared by all seeds; ``b``: (S, W)
    or (K, S, W) for K baselines (the best one per seed and replicate, i.e. the lowest mean NLL).
    Statistic: ``mean_s [exp(mean_w a[s, w] − min_k mean_w b[k, s, w]) − 1]``. Each replicate
    draws seed indices and window indices with replacement, the same ones for A and every B.
    Returns mean (on the data), lo, hi, seeds, windows, replicates."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if b.ndim == 2:
        b = b[None]
    if a.ndim != 2 or b.shape[1:] != a.shape:
        raise ValueError(f"paired bootstrap needs A (S, W) and B (K, S, W) of the same S, W; got {a.shape}, {b.shape}")
    S, W = a.shape

    def stat(si, wi):  # si (R, S), wi (R, W) -> (R,)
        A = a[si[:, :, None], wi[:, None, :]].mean(-1)
        B = b[:, si[:, :, None], wi[:, None, :]].mean(-1).min(0)
        return np.expm1(A - B).mean(-1)

    point = float(stat(np.arange(S)[None], np.arange(W)[None])[0])
    rng = np.random.default_rng(seed)
    si = rng.integers(0, S, size=(n_boot, S))
    wi = rng.integers(0, W, size=(n_boot, W))
    reps = stat(si, wi)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(reps, [alpha, 1 - alpha])
    return {"mean": point, "lo": float(lo), "hi": float(hi), "seeds": S, "windows": W, "replicates": n_boot}


def verdict(lo: float, hi: float, expect: float = -1.0, replicated: bool = True) -> str:
    """reproduced | contradicted | inconclusive from the interval [lo, hi] and the paper's sign."""
    if not replicated:
        return "inconclusive (one seed and one window: no interval)"
    if expect < 0:
        lo, hi = -hi, -lo
    if lo > 0:
        return "reproduced"
    if hi < 0:
        return "contradicted"
    return "inconclusive (interval contains 0)"


def claim_effect(df: pd.DataFrame, c: "Claim", n_boot: int = BOOTSTRAP_REPLICATES, seed: int = 0) -> dict | None:
    """Paired bootstrap of one claim on one model's sweep; None when a side was not measured."""
    b_metric = "magnitude" if c.paper == "Wanda" else c.metric
    a = _cells(df, c.a, c.metric, c.sparsity, c.quantity)
    bs = [_cells(df, b, b_metric, c.sparsity, c.quantity) for b in ([c.b] if isinstance(c.b, str) else c.b)]
    bs = [x for x in bs if len(x)]
    if not len(a) or not bs:
        return None
    seeds = sorted(set(a.index).intersection(*[set(x.index) for x in bs]))
    if not seeds:
        return None
    W = min(min(len(a[s]) for s in seeds), *(len(x[s]) for x in bs for s in seeds))
    A = np.stack([a[s][:W] for s in seeds])
    B = np.stack([np.stack([x[s][:W] for s in seeds]) for x in bs])
    return paired_bootstrap(A, B, n_boot, seed)


def reproduction_table(df: pd.DataFrame, claims=CLAIMS, n_boot: int = BOOTSTRAP_REPLICATES,
                       seed: int = 0) -> pd.DataFrame:
    """Each claim beside what was measured: paired mean Δ with its 95 % bootstrap interval and the
    verdict from the interval; one row per (claim, model) when ``df`` has a ``model`` column."""
    models = list(dict.fromkeys(df["model"])) if "model" in df else [None]
    rows = []
    for model in models:
        part = df if model is None else df[df["model"] == model]
        for c in claims:
            row = {"paper": c.paper, "claim": c.text, "paper_change_%": _pct(c.paper_change)}
            if model is not None:
                row = {"model": model, **row}
            eff = claim_effect(part, c, n_boot, seed)
            if eff is None:
                row.update({"measured_change_%": None, "ci_low_%": None, "ci_high_%": None, "seeds": 0,
                            "windows": 0, "verdict": "not measured (method or setting not in this run)",
                            "source": c.source})
            else:
                expect = -1.0 if c.paper_change is None else float(np.sign(c.paper_change))
                row.update({"measured_change_%": 100 * eff["mean"], "ci_low_%": 100 * eff["lo"],
                            "ci_high_%": 100 * eff["hi"], "seeds": eff["seeds"], "windows": eff["windows"],
                            "verdict": verdict(eff["lo"], eff["hi"], expect, eff["seeds"] * eff["windows"] > 1),
                            "source": c.source})
            rows.append(row)
    return pd.DataFrame(rows)


def reproduction_matrix(table: pd.DataFrame) -> pd.DataFrame:
    """The reproduction table with one column per model: "Δ % [lo, hi] verdict" per cell."""
    if "model" not in table:
        table = table.assign(model="model")
    models = list(dict.fromkeys(table["model"]))
    rows = []
    for (paper, claim), g in table.groupby(["paper", "claim"], sort=False):
        row = {"paper": paper, "claim": claim, "paper_change_%": g["paper_change_%"].iloc[0]}
        for m in models:
            sub = g[g["model"] == m]
            row[m] = matrix_cell(sub.iloc[0] if len(sub) else None)
        rows.append(row)
    return pd.DataFrame(rows)


def matrix_cell(r) -> str:
    """One reproduction-table row as a matrix cell: "Δ % [lo, hi] verdict" (``None``: not measured)."""
    if r is None or r["measured_change_%"] is None or pd.isna(r["measured_change_%"]):
        return "not measured"
    return (f"{r['measured_change_%']:+.1f} % [{r['ci_low_%']:+.1f}, {r['ci_high_%']:+.1f}] "
            f"{r['verdict'].split(' (')[0]}")


def _pct(x):
    return None if x is None else 100 * x


# ---------------------------------------------------------------- the designed sweep with per-window NLLs

def grid_mapping(grid: str, *, models=None, seeds=None, groups=None, eval_windows=None, dtype=None) -> dict:
    """The raw mapping of grid file ``grid`` (a packaged name such as ``comparison-cpu`` or a path)
    with the notebook's overrides applied (``None`` keeps the file's value); validated when run."""
    from prunekit.experiments.sweep import read_grid
    raw = dict(read_grid(grid))
    if models is not None:
        raw["models"] = list(models)
    if seeds is not None:
        raw["seeds"] = list(seeds)
    if groups is not None:
        raw["groups"] = [dict(g) for g in groups]
    if eval_windows is not None:
        raw["evaluation"] = {**(raw.get("evaluation") or {}), "windows": eval_windows}
    if dtype is not None:
        raw["dtype"] = dtype
    return raw


def run_grid(grid: str, *, results=None, progress: bool = False, **overrides) -> pd.DataFrame:
    """Notebook 50's runs through the one grid runner (``sweep.run_grid``): every cell of ``grid``
    with ``overrides`` (see ``grid_mapping``), one row per run with ``ppl_<d>`` and the per-window
    ``nll_<d>`` the paired bootstrap needs. With ``results`` (a JSON-lines file) the cells already
    recorded there by the same code are read back instead of re-run, and new ones are appended — so a
    long render can be filled ahead, per model or on Ray, by ``prunekit sweep GRID --out FILE``."""
    from prunekit.experiments.sweep import run_grid as _run
    df = _run(grid_mapping(grid, **overrides), out=results, progress=progress)
    failed = df.attrs.get("failed") or []
    if failed:
        bad = next(r for r in df.attrs["records"] if r["cell"] in failed)
        raise PrunekitError(f"{len(failed)} of {len(df)} runs failed; first: {bad['error']} "
                            f"({bad['settings']['model']}, {bad['settings']['allocation']})")
    return df.drop(columns=["cell", "status", "error"], errors="ignore")


def run_models(grid: str, models, *, results=None, seeds=None, groups=None, eval_windows=None):
    """Notebook 50's workload per model: its runs (``run_grid``) and the dense perplexities they are
    read against (one evaluation on the grid's windows). Returns (runs, dense, seconds per model);
    ``runs.attrs["models"]`` holds each model's provenance entry."""
    import time

    from prunekit.experiments.session import Session
    over = dict(seeds=seeds, groups=groups, eval_windows=eval_windows)
    cfg = settings_from_grid(grid, **over)
    parts, dense, seconds, prov = [], {}, {}, []
    for name in models:
        t0 = time.perf_counter()
        parts.append(run_grid(grid, results=results, models=[name], **over))
        session = Session(model_name=name, calib_samples=cfg["calib_samples"], calib_seqlen=cfg["calib_seqlen"],
                          eval_datasets=tuple(cfg["eval_datasets"]), eval_seqlen=cfg["eval_seqlen"],
                          eval_windows=cfg["eval_windows"], seed=cfg["seeds"][0], progress=False)
        dense[name] = session.dense()
        prov.append(session.provenance())
        session.close()
        seconds[name] = time.perf_counter() - t0
    runs = pd.concat(parts, ignore_index=True)
    runs.attrs["models"] = prov
    return runs, dense, seconds


def cpu_minutes(runs: pd.DataFrame, runs_sstar: pd.DataFrame | None = None, accuracy_runs=None) -> pd.DataFrame:
    """The profile's cost per model in process CPU-minutes, summed over runs: the grid's runs, the
    runs at s*, their sum (the perplexity part; the cpu profile's goal is <= 90 per model) and,
    apart, the zero-shot part (``accuracy_runs``' ``zero_shot_cpu_s``). A sum over a run without a
    recorded CPU time (read back from an older results file) is NaN, never a partial sum."""
    def total(df, model, col):
        mine = df[df["model"] == model] if df is not None and len(df) else ()
        if not len(mine):
            return 0.0
        if col not in mine or mine[col].isna().any():
            return float("nan")
        return float(mine[col].sum()) / 60
    acc = pd.DataFrame(list(accuracy_runs or []), columns=["model", "zero_shot_cpu_s"])
    rows = []
    for m in dict.fromkeys(runs["model"]):
        grid, at_s = total(runs, m, "cpu_seconds"), total(runs_sstar, m, "cpu_seconds")
        row = {"model": m, "grid runs": grid} | ({"s* runs": at_s} if runs_sstar is not None else {})
        row["perplexity part"] = grid + at_s
        if accuracy_runs is not None:  # a part that was not run is left out, not shown as NaN
            row["zero-shot part"] = total(acc, m, "zero_shot_cpu_s")
        rows.append(row)
    return pd.DataFrame(rows)


def settings_from_grid(grid: str, **overrides) -> dict:
    """Notebook 50's workload read from a grid file — a packaged name such as ``comparison-cpu``
    (``prunekit/experiments/grids``) or a path — validated, in the same shape as ``settings``;
    ``None`` overrides keep the grid's value. The same file runs unchanged with
    ``prunekit sweep GRID --out results.jsonl [--ray]``."""
    from prunekit.experiments.sweep import parse_grid, read_grid
    raw = read_grid(grid)
    g = parse_grid(raw, where=str(grid))
    combos = g.groups if g.groups is not None else [(s, m, list(g.allocations)) for s in g.sparsities
                                                    for m in g.metrics]
    out = {"grid": str(grid), "models": list(g.models), "seeds": list(g.seeds),
           "groups": [{"sparsity": s, "metric": m, "allocations": list(labs)} for s, m, labs in combos],
           "calib_samples": g.calibration["samples"], "calib_seqlen": g.calibration["seqlen"],
           "eval_datasets": list(g.evaluation["datasets"]), "eval_seqlen": g.evaluation["seqlen"],
           "eval_windows": g.evaluation["windows"], "zero_shot_tasks": list(g.zero_shot["tasks"]),
           "zero_shot_limit": g.zero_shot["limit"], "method_options": dict(raw.get("method_options") or {})}
    out.update({k: v for k, v in overrides.items() if v is not None})
    return out


def settings(profile: str, **overrides) -> dict:
    """Comparison workload for a profile; ``None`` overrides keep the profile's value."""
    check_profile(profile)
    out = {**COMPARISON[profile], "method_options": COMPARISON_METHOD_OPTIONS[profile]}
    out.update({k: v for k, v in overrides.items() if v is not None})
    return out


# ----------------------------------------------------------------------------- the packaged grids

def comparison_grid(profile: str, model: str | None = None) -> dict:
    """Notebook 50's grid for a profile, from ``profiles.COMPARISON`` (what the shipped
    ``grids/comparison-<profile>.yaml`` files hold; tests/test_sweep.py checks they agree)."""
    s = settings(profile)
    mo = s["method_options"]
    used = {lab for g in s["groups"] for lab in g["allocations"]}
    allocs = []
    for label, method, opts in configurations():
        if label in used:
            allocs.append(method if (label == method and not opts) else {"label": label, "method": method,
                                                                          "options": dict(opts)})
    return {"name": f"comparison-{profile}",
            "description": f"notebook 50 (grand comparison), profile {profile}: experiments/profiles.py COMPARISON",
            "models": [model] if model else list(s["models"]), "allocations": allocs, "method_options": {k: dict(v) for k, v in mo.items()},
            "groups": [{"sparsity": g["sparsity"], "metric": g["metric"], "allocations": list(g["allocations"])}
                       for g in s["groups"]],
            "seeds": list(s["seeds"]),
            "calibration": {"dataset": "c4", "samples": s["calib_samples"], "seqlen": s["calib_seqlen"],
                            "batch_size": 8},
            "evaluation": {"datasets": list(s["eval_datasets"]), "seqlen": s["eval_seqlen"],
                           "windows": s["eval_windows"]},
            "zero_shot": {"tasks": list(s["zero_shot_tasks"] or []), "limit": s["zero_shot_limit"]}}


def write_comparison_grids(folder=None) -> list:
    """(Re)generate the packaged notebook-50 grid files from the profile tables."""
    import yaml

    from prunekit.experiments.sweep.grid import GRID_DIR
    from prunekit.utils import atomic_write_text
    folder = GRID_DIR if folder is None else folder
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for prof in COMPARISON:
        head = ("# Generated by `python -m prunekit.experiments.sweep --write-comparison-grids` from\n"
                "# prunekit/experiments/profiles.py (COMPARISON, COMPARISON_METHOD_OPTIONS); edit those, then regenerate.\n")
        text = head + yaml.safe_dump(comparison_grid(prof), sort_keys=False, default_flow_style=None, width=110)
        out.append(atomic_write_text(folder / f"comparison-{prof}.yaml", text))
    return out
