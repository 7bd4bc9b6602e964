"""SV-NUP studies for notebook 30 and the benchmark: approximation quality vs cost, the paper-claim sentence."""
from __future__ import annotations

import itertools
from typing import Callable

import numpy as np

from prunekit.allocation.svnup.shapley import ShapleyResult, monte_carlo, sliding_window
from prunekit.errors import PrunekitError
from prunekit.experiments.correlation import spearman
from prunekit.experiments.profiles import SVNUP


def _rel_error(a, ref) -> float:
    return float(np.linalg.norm(np.asarray(a) - ref) / max(np.linalg.norm(ref), 1e-300))


def evaluations_to_reach(trace: list[dict], reference, threshold: float = 0.9) -> dict | None:
    """First Monte-Carlo checkpoint whose Spearman ρ against ``reference`` is ≥ ``threshold``
    (None if never reached): {permutations, evaluations, seconds, spearman}."""
    for t in trace:
        r = spearman(t["values"], reference)
        if r >= threshold:
            return {"permutations": t["permutations"], "evaluations": t["evaluations"],
                    "seconds": t["seconds"], "spearman": r}
    return None


def approximation_study(v: Callable, n: int, reference_permutations: int = 200, reference_seed: int = 12345,
                        mc_permutations: int = 50, mc_seed: int = 0, windows=(3, 5), disjoint=(False,),
                        backgrounds=("absent",), checkpoints: int = 8, fresh: bool = True,
                        progress: bool = True, reference: ShapleyResult | None = None):
    """Approximation quality vs cost against a long Monte-Carlo reference.

    Rows (pandas DataFrame): sliding window for every w in ``windows`` × ``disjoint`` ×
    ``backgrounds``, and the
    Monte-Carlo estimate (seed ``mc_seed``, independent of the reference) at ``checkpoints``
    geometrically spaced permutation counts up to ``mc_permutations``. Columns: estimator,
    setting, evaluations, seconds, spearman, rel_error (‖φ − φ_ref‖/‖φ_ref‖). ``fresh`` clears the
    game's caches before each estimator (if ``v`` has ``clear_cache``) so the seconds are honest.
    The reference result is attached as ``df.attrs['reference']``."""
    import pandas as pd

    def clear():
        if fresh and hasattr(v, "clear_cache"):
            v.clear_cache()

    if reference is None:
        clear()
        reference = monte_carlo(v, n, reference_permutations, reference_seed, progress=progress)
    ref = reference.values
    rows = []
    for w, dj, bg in itertools.product(windows, disjoint, backgrounds):
        clear()
        r = sliding_window(v, n, w, disjoint=dj, background=bg, progress=progress)
        rows.append({"estimator": "sliding_window" + ("_disjoint" if dj else ""),
                     "setting": f"w={min(w, n)}" + ("" if bg == "absent" else f",{bg}"),
                     "evaluations": r.evaluations, "seconds": r.seconds,
                     "spearman": spearman(r.values, ref), "rel_error": _rel_error(r.values, ref)})
    clear()
    mc = monte_carlo(v, n, mc_permutations, mc_seed, progress=progress)
    ks = sorted({int(round(x)) for x in np.geomspace(1, mc_permutations, checkpoints)} | {mc_permutations})
    for k in ks:
        t = mc.trace[k - 1]
        rows.append({"estimator": "monte_carlo", "setting": f"perms={k}", "evaluations": t["evaluations"],
                     "seconds": t["seconds"], "spearman": spearman(t["values"], ref),
                     "rel_error": _rel_error(t["values"], ref)})
    df = pd.DataFrame(rows)
    df.attrs["reference"] = {"values": ref.tolist(), "stderr": None if reference.stderr is None else reference.stderr.tolist(),
                             "permutations": reference.options.get("n_permutations"),
                             "evaluations": reference.evaluations, "seconds": reference.seconds}
    return df


def paper_claim(table, sparsity: float = 0.7, metric: str = "sparsegpt", dataset: str = "wikitext2",
                claimed: float = 18.01) -> str:
    """One sentence comparing SV-NUP with uniform at ``sparsity`` under ``metric`` against the
    paper's claim (−18.01 % perplexity vs uniform SparseGPT at 70 %, LLaMA-7B). ``table``: DataFrame
    or records with columns allocation, metric, sparsity, ``dataset`` (perplexity)."""
    import pandas as pd
    df = pd.DataFrame(table)
    sel = df[(df["metric"] == metric) & (np.isclose(df["sparsity"].astype(float), sparsity))]
    try:
        sv = float(sel[sel["allocation"] == "svnup"][dataset].iloc[0])
        un = float(sel[sel["allocation"] == "uniform"][dataset].iloc[0])
    except (IndexError, KeyError):
        return f"Cannot check the claim: the table has no svnup and uniform {metric} rows at {sparsity:.0%}."
    change = 100.0 * (sv - un) / un
    if metric != "sparsegpt":  # the paper's number is for SparseGPT; another solver does not test it
        return (f"At {sparsity:.0%} sparsity with {metric}, SV-NUP gives {dataset} perplexity {sv:.2f} vs "
                f"{un:.2f} for uniform ({change:+.1f} %). The paper's claim (−{claimed:.2f} %, LLaMA-7B) is "
                f"for SparseGPT, which this run did not measure, so it is neither confirmed nor refuted.")
    verdict = ("reproduces" if change <= -0.5 * claimed else
               "points the same way as, but is weaker than," if change < 0 else "does NOT reproduce")
    return (f"At {sparsity:.0%} sparsity with {metric}, SV-NUP gives {dataset} perplexity {sv:.2f} vs {un:.2f} "
            f"for uniform ({change:+.1f} %); this {verdict} the paper's claim of −{claimed:.2f} % "
            f"(LLaMA-7B).")


# ============================================================================ notebook helpers



def notebook_defaults(profile: str = "quick", **overrides) -> dict:
    """SV-NUP notebook settings for a workload profile; ``None`` overrides keep the default.
    ``game_metric='same'`` plays the layer game with the pruning solver's metric (the paper's
    setting); 'wanda' shares one game between solvers (cheaper: one Shapley run per sparsity)."""
    if profile not in SVNUP:
        raise PrunekitError(f"unknown profile '{profile}'; choose from {', '.join(SVNUP)}")
    out = dict(SVNUP[profile])
    out.update({k: v for k, v in overrides.items() if v is not None})
    return out


def compare_svnup(session, sparsities=(0.6, 0.7), metrics=("sparsegpt", "wanda"),
                        allocations=("uniform", "owl", "alphapruning", "svnup"), svnup_options: dict | None = None,
                        game_metric: str = "wanda"):
    """``Session.sweep`` of every (metric, allocation, sparsity); unregistered allocations are skipped
    (``df.attrs['skipped']``). SV-NUP plays its layer game with ``game_metric`` ('same': the solver's
    metric). Columns: metric, allocation, sparsity, global_sparsity, one perplexity column per
    evaluation dataset, seconds, shapley_evaluations; the SV-NUP plans' Shapley values are in
    ``df.attrs['shapley']`` keyed by 'metric@sparsity'."""
    import pandas as pd
    shap = {}

    def record(rec, row):
        if row["method"] == "svnup":
            shap[f"{row['metric']}@{row['sparsity']}"] = rec["plan_extras"]["shapley"]
            row["shapley_evaluations"] = rec["plan_extras"]["shapley_evaluations"]

    parts = []
    for metric in metrics:  # the game's metric may follow the solver's, so one sweep per metric
        base = metric if game_metric in (None, "same") else game_metric
        part = session.sweep(list(allocations), [metric], sparsities,
                             {"svnup": {**(svnup_options or {}), "base_metric": base}}, on_run=record)
        parts.append(part)
    skipped = parts[0].attrs["skipped"] if parts else []
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    df = df.drop(columns=["method", "planned", "allocate_s"], errors="ignore")
    df = df.rename(columns=lambda c: c[4:] if c.startswith("ppl_") else c)
    df.attrs.update(skipped=skipped, shapley=shap)
    return df
