"""Absorption study for notebook 40: correction vs base allocations, the paper-claim verdicts."""
from __future__ import annotations

import numpy as np

from prunekit.allocation.absorption import DEFAULT_GAMMA, coefficients, sweep_table, transition_summary
from prunekit.allocation.absorption.probe import (
    probe_from_stats,
    prune_trajectories_from_stats,
    trajectories_from_stats,
)
from prunekit.errors import PrunekitError
from prunekit.experiments.profiles import ABSORPTION, BASES


def compare_correction(session, bases=BASES, sparsities=(0.6, 0.7), metrics=("wanda", "sparsegpt"),
                       gamma: float = DEFAULT_GAMMA, variants=("noise",), dataset: str | None = None,
                       **absorption_options):
    """Perplexity of each available base allocation with and without the correction (pandas table,
    one row per base × metric × sparsity × variant). Bases not registered (``allocate.methods()``)
    are skipped. ``variants``: 'noise' (r from Gaussian noise, the spec) and/or 'prune' (r from
    each block pruned alone with the run's metric at the run's sparsity, [I]). Columns: base,
    metric, sparsity, variant, ppl_base, ppl_corrected, rel_change (ppl_corrected/ppl_base − 1)."""
    import pandas as pd

    from prunekit.allocation.registry import methods
    for v in variants:
        if v not in ("noise", "prune"):
            raise PrunekitError(f"unknown variant '{v}'; choose from noise, prune")
    avail = methods()
    dataset = dataset or session.eval_datasets[0]
    rows = []
    for b in [b for b in bases if b in avail]:
        for metric in metrics:
            for s in sparsities:
                base = session.run(b, metric, s)
                pb = base["perplexity"][dataset]
                for v in variants:
                    extra = {"perturbation": v, **({"prune_metric": metric} if v == "prune" else {})}
                    corr = session.run("absorption", metric, s, base=b, gamma=gamma, **extra, **absorption_options)
                    pc = corr["perplexity"][dataset]
                    rows.append({"base": b, "metric": metric, "sparsity": s, "variant": v, "ppl_base": pb,
                                 "ppl_corrected": pc, "rel_change": pc / pb - 1.0,
                                 "realised_base": base["global_sparsity"],
                                 "realised_corrected": corr["global_sparsity"]})
    session.restore()
    return pd.DataFrame(rows)


def _claim1(r, what: str) -> str:
    r = np.asarray(r, dtype=float)
    L = r.size
    early = max(1, L // 6)
    rho = float(np.corrcoef(np.arange(L), np.log(r))[0, 1]) if L > 2 else float("nan")
    early_amp = float((r[:early] > 1).mean())
    later_abs = float((r[early:] < 1).mean()) if L > early else float("nan")
    ok = early_amp >= 0.5 and later_abs >= 0.5
    return (f"Claim 1 (early blocks amplify, middle/late blocks absorb) with {what}: "
            f"{'SUPPORTED' if ok else 'NOT SUPPORTED'} — {int((r[:early] > 1).sum())}/{early} of the first "
            f"blocks have r > 1 (max {r[:early].max():.3g}), {later_abs:.0%} of the remaining blocks have r < 1 "
            f"(min {r[early:].min():.3g}); correlation of log r with depth {rho:+.2f}.")


def verdicts(r, sweep=None, comparison=None, r_prune=None, prune_label: str = "",
             prune_trajectories=None, paper_change: float = -0.0713) -> list[str]:
    """Plain sentences on the paper's three claims, computed from the measured data: ``r`` noise
    coefficients at the working η, ``sweep`` an η sweep table, ``comparison`` a
    ``compare_correction`` table, ``r_prune`` coefficients of the pruning perturbation."""
    out = [_claim1(r, "noise coefficients")]
    if r_prune is not None:
        out.append(_claim1(r_prune, f"pruning-perturbation coefficients ({prune_label})"))
    if sweep is not None and len(sweep):
        summ = transition_summary(sweep)
        small, big = summ.iloc[0], summ.iloc[-1]
        mono = bool(np.all(np.diff(summ["geomean_r"].to_numpy()) <= 1e-9))
        ok2 = small["frac_amplifying"] >= 0.9 and big["frac_amplifying"] < small["frac_amplifying"]
        out.append(
            f"Claim 2 (small perturbations are amplified everywhere, absorption grows with the perturbation "
            f"size): {'SUPPORTED' if ok2 else 'NOT SUPPORTED'} — at eta={small['eta']:g} "
            f"{small['frac_amplifying']:.0%} of blocks amplify (geomean r {small['geomean_r']:.3g}); at "
            f"eta={big['eta']:g} {big['frac_amplifying']:.0%} (geomean r {big['geomean_r']:.3g}); geometric-mean r "
            f"{'decreases monotonically' if mono else 'does not decrease monotonically'} with eta.")
    if prune_trajectories:
        R0 = np.array([t.drift[0] for t in prune_trajectories])
        top = f"; the sweep's largest eta is {sweep['eta'].max():g}" if sweep is not None and len(sweep) else ""
        out.append(
            f"Pruning scale: pruning one block ({prune_label}) injects a relative drift R_l of "
            f"{np.median(R0):.3g} (median; range {R0.min():.3g}–{R0.max():.3g}){top}" + (f"; fraction of blocks with r > 1: {(np.asarray(r_prune) > 1).mean():.0%} "
                                           f"for pruning vs {(np.asarray(r) > 1).mean():.0%} for noise."
                                           if r_prune is not None else "."))
    if comparison is not None and len(comparison):
        c7 = comparison[(comparison["sparsity"] - 0.7).abs() < 1e-9]
        paper_bases = c7["base"].isin(["owl", "alphapruning"])
        c7 = c7[paper_bases] if paper_bases.any() else c7
        for v, c in c7.groupby("variant", sort=False):
            mean = float(c["rel_change"].mean())
            better = int((c["rel_change"] < 0).sum())
            close = mean < 0 and abs(mean - paper_change) < 0.05
            word = ("SUPPORTED in direction" if mean < 0 and better == len(c)
                    else "MIXED" if mean < 0 or better else "NOT SUPPORTED")
            out.append(
                f"Claim 3 (correction lowers perplexity at 70%, paper {paper_change:+.2%}) with {v} coefficients: "
                f"{word} — mean relative perplexity change "
                f"{mean:+.2%} over {len(c)} runs ({', '.join(sorted(set(c['base'])))}; {better}/{len(c)} improved)"
                f"{'; magnitude comparable to the paper' if close else ''}.")
    return out


# ============================================================================ notebook study



def notebook_defaults(profile: str = "quick", model: str | None = None, **overrides) -> dict:
    """Per-profile parameters of notebooks/40_absorption.ipynb; ``None`` overrides are ignored.
    ``model`` replaces the first entry of the profile's model list (SmolLM2)."""
    if profile not in ABSORPTION:
        raise PrunekitError(f"unknown profile '{profile}'; choose from {', '.join(ABSORPTION)}")
    out = {k: (list(v) if isinstance(v, list) else v) for k, v in ABSORPTION[profile].items()}
    if model:
        out["models"] = [model] + [m for m in out["models"][1:] if m != model]
    out.update({k: v for k, v in overrides.items() if v is not None})
    return out


def study(model: str = "smollm2-135m", profile: str = "quick", gamma: float = DEFAULT_GAMMA, eta: float = 1e-2,
          prune_sparsity: float = 0.7, prune_metric: str = "wanda", session=None, **params) -> dict:
    """Everything notebook 40 shows for one model: noise coefficients at ``eta`` (+ trajectories),
    an η sweep, pruning-perturbation coefficients (every block pruned alone at ``prune_sparsity``
    with ``prune_metric``) and the perplexity of the base allocations with / without the correction.
    ``params`` override ``notebook_defaults(profile)`` (etas, sparsities, metrics, bases, variants,
    probe_samples, probe_seqlen, sweep_every). Returns a dict of tables / arrays."""
    import time

    from prunekit.experiments.session import Session
    p = notebook_defaults(profile, **params)
    t0 = time.perf_counter()
    session = session or Session.from_profile(profile, model_name=model)
    popts = dict(probe_samples=p["probe_samples"], probe_seqlen=p["probe_seqlen"])
    session.restore()
    box: dict = {}
    # cached on disk; the allocation runs below reuse exactly these entries
    trajs = trajectories_from_stats(session.stats, eta, _probe=box, **popts)
    prune_trajs = prune_trajectories_from_stats(session.stats, prune_sparsity, prune_metric, _probe=box, **popts)
    r, r_prune = coefficients(trajs), coefficients(prune_trajs)
    L = len(r)
    sweep_layers = list(range(0, L, p["sweep_every"]))
    others = [e for e in p["etas"] if e != eta]
    if others and "probe" not in box:  # everything above came from the cache: one clean run here
        box["probe"] = probe_from_stats(session.stats, **popts)
    by_eta = {e: box["probe"].scan("noise", sweep_layers, desc=f"absorption: eta={e:g}", eta=e) for e in others}
    by_eta[eta] = [trajs[l] for l in sweep_layers]
    sweep = sweep_table(by_eta)
    box.clear()
    comparison = compare_correction(session, p["bases"], p["sparsities"], p["metrics"], gamma,
                                    variants=p["variants"], **popts)
    comparison.insert(0, "model", model)
    dense = session.dense()
    label = f"{prune_metric} at {prune_sparsity:.0%}"
    return {"model": model, "profile": profile, "eta": eta, "r": r, "r_prune": r_prune, "prune_label": label,
            "trajectories": trajs, "prune_trajectories": prune_trajs, "sweep": sweep,
            "transition": transition_summary(sweep), "comparison": comparison, "dense_ppl": dense,
            "verdicts": verdicts(r, sweep, comparison, r_prune, label, prune_trajs),
            "seconds": time.perf_counter() - t0, "params": p, "gamma": gamma,
            "model_provenance": session.provenance()}


def results_table(studies) -> dict:
    """JSON-ready summary of several ``study`` results (for ``report.save_results``)."""
    out = {"models": {}}
    for s in studies:
        out["models"][s["model"]] = {
            "eta": s["eta"], "gamma": s["gamma"], "coefficients": [float(x) for x in s["r"]],
            "coefficients_prune": [float(x) for x in s["r_prune"]], "prune_label": s["prune_label"],
            "prune_R_inject": [float(t.drift[0]) for t in s["prune_trajectories"]],
            "transition": s["transition"].to_dict(orient="records"),
            "comparison": s["comparison"].to_dict(orient="records"),
            "dense_ppl": s["dense_ppl"], "verdicts": s["verdicts"], "seconds": round(s["seconds"], 1),
            "params": s["params"]}
    return out
