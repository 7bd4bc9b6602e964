"""The grand comparison: every registered allocation × metric × sparsity over several calibration
seeds, and the reproduction table of the three papers' headline claims (plus the baselines').

A claim is a relative perplexity change of configuration A vs configuration B at one setting.
Per seed Δ = ppl_A / ppl_B − 1; the verdict compares mean Δ with its spread across seeds:
``inconclusive`` when |mean| ≤ std (or fewer than 2 seeds), ``reproduced`` when the sign matches
the paper's, ``not reproduced`` otherwise. The paper's magnitude is shown beside ours, not judged:
our models and data are far smaller than the papers'.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from prunekit.allocation.registry import methods
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


def run_comparison(session, seeds, metrics, sparsities, configs=None, options: dict | None = None,
                   zero_shot_tasks=None, zero_shot_limit=None) -> pd.DataFrame:
    """``Session.sweep`` with one row per (seed, allocation label, metric, sparsity): perplexities and
    zero-shot mean. ``options`` maps a registered method name to extra keyword options (e.g. faster
    SV-NUP); the absorption wrapper passes its base method's options on."""
    options = options or {}
    variants = {}
    for label, method, opts in configs or configurations():
        if method == "absorption":
            opts = {"base_options": options.get(opts["base"], {}), **opts}
        variants[label] = (method, opts)
    return session.sweep(variants, metrics, sparsities, options, seeds=list(seeds),
                         zero_shot=list(zero_shot_tasks or []) or None, zero_shot_limit=zero_shot_limit)


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds of every numeric column, per (allocation, metric, sparsity)."""
    value_cols = [c for c in df.columns if c.startswith("ppl_") or c == "zero_shot_mean"]
    g = df.groupby(["allocation", "metric", "sparsity"])[value_cols]
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


def _per_seed(df: pd.DataFrame, label: str, metric: str, sparsity: float, col: str, other_metric=None) -> pd.Series:
    sel = df[(df.allocation == label) & (df.metric == (other_metric or metric)) & np.isclose(df.sparsity, sparsity)]
    return sel.set_index("seed")[col] if col in sel else pd.Series(dtype=float)


def reproduction_table(df: pd.DataFrame, claims=CLAIMS) -> pd.DataFrame:
    """Each claim beside what was measured, with a verdict over the calibration seeds."""
    rows = []
    for c in claims:
        b_metric = "magnitude" if c.paper == "Wanda" else None
        a = _per_seed(df, c.a, c.metric, c.sparsity, c.quantity)
        bs = [c.b] if isinstance(c.b, str) else list(c.b)
        parts = [_per_seed(df, b, c.metric, c.sparsity, c.quantity, b_metric) for b in bs]
        parts = [p for p in parts if len(p)]
        if not len(a) or not parts:
            rows.append({"paper": c.paper, "claim": c.text, "paper_change_%": _pct(c.paper_change),
                         "measured_change_%": None, "std_%": None, "seeds": 0,
                         "verdict": "not measured (method or setting not in this run)", "source": c.source})
            continue
        base = pd.concat(parts, axis=1).min(axis=1)
        delta = (a / base - 1).dropna()
        mean, std = float(delta.mean()), float(delta.std(ddof=1)) if len(delta) > 1 else float("nan")
        expect = -1.0 if c.paper_change is None else np.sign(c.paper_change)
        if len(delta) < 2 or abs(mean) <= std:
            verdict = "inconclusive within the seed spread"
        elif np.sign(mean) == expect:
            verdict = "reproduced"
        else:
            verdict = "not reproduced"
        rows.append({"paper": c.paper, "claim": c.text, "paper_change_%": _pct(c.paper_change),
                     "measured_change_%": 100 * mean, "std_%": 100 * std if np.isfinite(std) else None,
                     "seeds": len(delta), "verdict": verdict, "source": c.source})
    return pd.DataFrame(rows)


def _pct(x):
    return None if x is None else 100 * x





def settings(profile: str, **overrides) -> dict:
    """Comparison workload for a profile; ``None`` overrides keep the profile's value."""
    check_profile(profile)
    out = {**COMPARISON[profile], "method_options": COMPARISON_METHOD_OPTIONS[profile]}
    out.update({k: v for k, v in overrides.items() if v is not None})
    return out
