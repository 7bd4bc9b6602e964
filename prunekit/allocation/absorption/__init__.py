"""Absorption: controlled perturbation experiments and the absorption-aware correction
("Beyond Layer Importance in Layer-wise Sparsity: An Inter-Layer Perturbation-Absorption
Perspective", arXiv 2606.15161; docs/methods.md §3).

Measurement (``Probe``)
    A perturbation is injected at the output of decoder block ``l`` and the perturbed hidden
    states are followed through blocks ``l+1 … L−1`` next to the clean run on the same calibration
    tokens. At every depth ``k ≥ l`` (k = the block whose output is measured) and every token t:

    * relative L2 drift   ``R_k = ‖h'_k − h_k‖ / ‖h_k‖``                                   (§3 [S])
    * state alignment     ``cos_state_k = cos(h'_k, h_k)`` — 1 when the perturbed state points
      along the clean trajectory ("direction realigning toward the unperturbed trajectory");
    * drift direction     ``cos_drift_k = cos(h'_k − h_k, h_k)`` — the component of the drift
      along the clean state (≈0 for isotropic noise; <0 when the block shrinks the perturbed
      state back, >0 when the perturbation inflates the state's norm).

    The same quantities are also measured once after the model's final norm (``*_norm`` fields).
    Averages run over calibration tokens (position 0 of each window excluded by default —
    ``skip_first``: its hidden state is an attention sink with an extreme norm) and noise draws.

    Perturbations: Gaussian noise of relative size η per token (``‖δ_t‖ = η·‖h_{l,t}‖`` exactly,
    direction uniform; ``relative_to="update"`` scales by the block's update ‖h_l − h_{l−1}‖
    instead, [I]) or the real pruning perturbation (block l pruned at sparsity s with
    magnitude/Wanda/SparseGPT via ``prune.prune_block``, statistics from the dense inputs of block
    l, weights restored afterwards).

Absorption coefficient
    ``r_l = E[R_final / R_l]`` (``reduction="mean_of_ratios"``, §3 [S]) or ``E[R_final]/E[R_l]``
    (``"ratio_of_means"``); ``depth="final"`` uses the last block's output (``final_norm=True``:
    after the final norm), ``depth="mean"`` averages the ratio over all depths k > l. r > 1:
    block l's perturbations are amplified downstream; r < 1: absorbed. For l = L−1 without the
    final norm there is no later depth and r = 1 by definition.

Clean run and memory / compute trade-off
    The clean trajectory is computed ONCE (``calibrate.capture`` + ``calibrate.run_block``; no other
    layer loop) and its block boundaries are kept (``store="cpu"`` or ``"device"``) every
    ``checkpoint_every`` blocks. ``checkpoint_every=1`` (default) stores all L+1 boundaries:
    memory (L+1)·N·T·d floats (SmolLM2-135M, 4×128 tokens: 37 MB), cost per noise draw
    Σ_l (L−1−l) ≈ L²/2 block runs ≈ L/2 dense forwards for all coefficients. With
    ``checkpoint_every=c`` only every c-th boundary is kept (memory ÷ c) and clean states in
    between are recomputed next to the perturbed run (≤ 2× the block runs).

Correction (``absorption_correction`` and the registered ``"absorption"`` allocation)
    ``u = clip(log r, −c, c)``, ``Δ = −(u − mean u)``, ``s' = s_base + γΔ`` (broadcast per block to
    every matrix), then ``allocate`` restores the budget and the bounds (§3 [S]). Defaults [I]:
    c = log 3, γ = λ_corr / c with λ_corr = 0.04, η = 1e-2, 1 noise draw (each token already gets
    its own draw; more draws only reduce variance). ``perturbation="prune"`` [I] takes r from the
    real pruning perturbation instead (each block pruned alone at the target sparsity): on
    SmolLM2-135M pruning one block at 70 % injects R_l ≈ 0.1–0.4, far above η = 1e-2, which is
    why the η sweep (``ETAS``) extends to 0.3.

    What the correction guarantees about amplifying blocks: before budget restoration
    Δ is non-increasing in r, so a block with u_l ≥ mean(u) (r above the geometric mean, in
    particular the most amplifying block) never gets more sparsity than the base plan gives it.
    A block with r > 1 is guaranteed Δ ≤ 0 only if mean(u) ≤ 0 (the usual case at η = 1e-2,
    where most blocks absorb) or with ``center="none"`` (Δ = −u). After restoration: with equal
    block sizes Σ n_l Δ_l = 0, so when no value hits a bound the budget shift is 0 and the
    statement carries over unchanged; clipping at s_min/s_max only adds a common shift to the
    unclipped blocks, so the ordering of s' − s_base across blocks is preserved.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

from prunekit.allocation.absorption.probe import (Probe, Trajectory, coefficients, prune_trajectories_from_stats,
                                                  trajectories_from_stats)
from prunekit.allocation.plan import SparsityPlan
from prunekit.allocation.registry import allocate, register, spec, with_solver_metric
from prunekit.errors import PrunekitError
from prunekit.vocabulary import Metric

LAMBDA_CORR = 0.04                 # [I] half of OWL's λ = 0.08 (docs/methods.md §3)
CLIP = math.log(3.0)               # [S] u = clip(log r, −log 3, log 3)
DEFAULT_GAMMA = LAMBDA_CORR / CLIP  # [I] γ = λ_corr / c
ETAS = (1e-4, 1e-3, 1e-2, 5e-2, 1e-1, 3e-1)  # 0.3 ≈ the drift pruning one block injects
CENTERS = ("mean", "none")
PERTURBATIONS = ("prune", "matched", "noise")
# [I] γ grid for the held-out selection: λ_corr ∈ {0, 0.02, 0.04, 0.08} (0 = keep the base plan)
LAMBDA_GRID = (0.0, 0.02, 0.04, 0.08)
GAMMA_GRID = tuple(lam / CLIP for lam in LAMBDA_GRID)


def absorption_coefficients(model, input_ids, *, eta: float = 1e-2, draws: int = 1, seed: int = 0,
                            reduction: str = "mean_of_ratios", depth: str = "final",
                            final_norm: bool = False, skip_first: bool = True, batch_size: int = 8,
                            progress: bool = True) -> np.ndarray:
    """Convenience: one ``Probe`` and all L noise coefficients."""
    probe = Probe(model, input_ids, batch_size=batch_size, skip_first=skip_first, progress=progress)
    return probe.coefficients(eta, draws, seed, reduction=reduction, depth=depth, final_norm=final_norm)


# ============================================================================ η sweep

def sweep_table(trajectories_by_eta: dict, reduction: str = "mean_of_ratios", depth: str = "final",
                final_norm: bool = False):
    """Long table (pandas), one row per (η, injection block): r, injected drift R_l, final drift,
    final cos_state, from ``{eta: [Trajectory, ...]}``."""
    import pandas as pd
    rows = []
    for eta, trajs in sorted(trajectories_by_eta.items()):
        for t in trajs:
            rows.append({"eta": float(eta), "layer": t.layer,
                         "r": t.coefficient(reduction, depth, final_norm),
                         "R_inject": float(t.drift[0]), "R_final": float(t.drift[-1]),
                         "cos_state_final": float(t.cos_state[-1])})
    return pd.DataFrame(rows)


def eta_sweep(source, etas=ETAS, draws: int = 1, seed: int = 0, reduction: str = "mean_of_ratios",
              depth: str = "final", final_norm: bool = False, layers=None, **probe_options):
    """η sweep as a ``sweep_table``. ``source``: a ``Probe`` (its clean run reused for every η;
    ``layers`` may restrict the injection blocks; ``probe_options`` = relative_to) or a
    ``Statistics`` (every block measured, cached per η through ``trajectories_from_stats`` with one
    shared clean run; ``probe_options`` = relative_to, skip_first, probe_samples, probe_seqlen)."""
    by_eta = {}
    box: dict = {}
    for eta in etas:
        if isinstance(source, Probe):
            by_eta[eta] = source.scan("noise", layers, desc=f"absorption: eta={eta:g}", eta=eta, draws=draws,
                                      seed=seed, **probe_options)
        else:
            trajs = trajectories_from_stats(source, eta, draws, seed, _probe=box, **probe_options)
            by_eta[eta] = trajs if layers is None else [trajs[l] for l in layers]
    return sweep_table(by_eta, reduction, depth, final_norm)


def transition_summary(sweep):
    """Per η: how many blocks amplify (r > 1), geometric-mean / min / max r — the
    amplification → absorption transition of finding 2."""
    import pandas as pd
    out = []
    for eta, g in sweep.groupby("eta", sort=True):
        r = g["r"].to_numpy(float)
        out.append({"eta": eta, "blocks": len(r), "amplifying": int((r > 1).sum()),
                    "frac_amplifying": float((r > 1).mean()), "geomean_r": float(np.exp(np.log(r).mean())),
                    "min_r": float(r.min()), "max_r": float(r.max())})
    return pd.DataFrame(out)


# ============================================================================ correction

def correction_signal(coefficients, clip: float = CLIP, center: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """(u, Δ): ``u = clip(log r, −c, c)``; ``Δ = −(u − mean u)`` (``center="mean"``, §3 [S]) or
    ``Δ = −u`` (``center="none"``, [I]). Amplifying blocks (large u) get Δ < 0 (protected)."""
    r = np.asarray(coefficients, dtype=float).reshape(-1)
    if r.size == 0 or not np.all(np.isfinite(r)) or (r <= 0).any():
        raise PrunekitError("absorption coefficients must be finite and > 0 (no drift measured: was nothing "
                            "pruned at this sparsity, or the calibration too short?)")
    u = np.clip(np.log(r), -clip, clip)
    delta = -(u - u.mean()) if center == "mean" else -u
    return u, delta


def absorption_correction(plan, coefficients, gamma: float = DEFAULT_GAMMA, clip: float = CLIP,
                          center: str = "mean") -> np.ndarray:
    """Pure correction ``s' = s_base + γΔ`` (no budget restoration, no bounds).

    ``plan``: SparsityPlan, per-block vector (L,) or (L, K) array; returns the same shape with the
    block's Δ added to every matrix of that block."""
    values = np.asarray(getattr(plan, "values", plan), dtype=float)
    _, delta = correction_signal(coefficients, clip, center)
    if values.shape[0] != delta.size:
        raise PrunekitError(f"plan has {values.shape[0]} blocks but {delta.size} absorption coefficients")
    return values + gamma * (delta if values.ndim == 1 else delta[:, None])


def coefficients_from_stats(stats, eta: float = 1e-2, draws: int = 1, seed: int = 0,
                            relative_to: str = "state", skip_first: bool = True,
                            reduction: str = "mean_of_ratios", depth: str = "final",
                            final_norm: bool = False, probe_samples: int = 0,
                            probe_seqlen: int = 0, perturbation: str = "noise", sparsity: float | None = None,
                            prune_metric: str = "wanda") -> tuple[np.ndarray, list[Trajectory]]:
    """(r, trajectories) of ``stats.model`` on ``stats.calib``; reduction/depth/final_norm are
    applied to the cached trajectories, so they share one cache entry. ``perturbation="prune"``
    [I]: r from the real pruning perturbation (each block pruned alone at ``sparsity`` with
    ``prune_metric``); ``"matched"`` [I]: Gaussian noise whose size matches, block by block, the
    drift that pruning injects there (η_l = the measured injected drift R_l of the pruned block);
    ``"noise"``: Gaussian noise of one size η for every block."""
    if perturbation in ("prune", "matched"):
        if sparsity is None:
            raise PrunekitError(f"perturbation='{perturbation}' needs a sparsity")
        box: dict = {}
        trajs = prune_trajectories_from_stats(stats, sparsity, prune_metric, skip_first, probe_samples,
                                              probe_seqlen, _probe=box)
        if perturbation == "matched":
            trajs = matched_noise_trajectories(stats, [float(t.drift[0]) for t in trajs], draws, seed, skip_first,
                                               probe_samples, probe_seqlen, _probe=box,
                                               tag=f"{prune_metric}@{float(sparsity):g}")
    else:
        trajs = trajectories_from_stats(stats, eta, draws, seed, relative_to, skip_first, probe_samples,
                                        probe_seqlen)
    return coefficients(trajs, reduction, depth, final_norm), trajs


def matched_noise_trajectories(stats, etas, draws: int = 1, seed: int = 0, skip_first: bool = True,
                               probe_samples: int = 0, probe_seqlen: int = 0, _probe: dict | None = None,
                               tag: str = "") -> list[Trajectory]:
    """Noise trajectories with one η per block (``etas[l]``: the drift pruning injects at block l),
    cached with ``stats.cached`` under the η vector."""
    from prunekit.allocation.absorption.probe import probe_from_stats
    box = _probe if _probe is not None else {}
    etas = [float(e) for e in etas]
    if len(etas) != stats.num_blocks or not all(math.isfinite(e) and e >= 0 for e in etas):
        raise PrunekitError("matched noise needs one finite drift >= 0 per block")

    def compute():
        if "probe" not in box:
            box["probe"] = probe_from_stats(stats, skip_first, probe_samples, probe_seqlen)
        flat = {}
        for l, e in enumerate(etas):
            flat.update(box["probe"].noise(l, eta=e, draws=draws, seed=seed).to_tensors(str(l)))
        return flat

    flat = stats.cached("absorption_matched_trajectories", compute, etas=[round(e, 9) for e in etas],
                        draws=int(draws), seed=int(seed), skip_first=bool(skip_first),
                        probe_samples=int(probe_samples), probe_seqlen=int(probe_seqlen), tag=tag)
    return [Trajectory.from_tensors(flat, str(l), f"noise(eta={etas[l]:.3g}, matched)") for l in range(stats.num_blocks)]


def heldout_ids(stats, samples: int = 4, seqlen: int = 0, heldout=None) -> torch.Tensor:
    """Held-out calibration windows (seed + 1, disjoint from the pruning samples; SV-NUP's set);
    ``heldout``: a dataset name, or a Calibration / token tensor used as given."""
    from prunekit.allocation.svnup.game import heldout_data
    from prunekit.core.data import Calibration
    if isinstance(heldout, Calibration):
        return heldout.input_ids
    if isinstance(heldout, torch.Tensor):
        if heldout.dim() != 2 or heldout.shape[1] < 2:
            raise PrunekitError("held-out tokens must be a (samples, seqlen >= 2) tensor")
        return heldout
    try:
        return heldout_data(stats, samples, seqlen or None, heldout).input_ids
    except PrunekitError:
        raise
    except Exception as e:  # e.g. a synthetic calibration set that has no text to draw from
        raise PrunekitError(f"absorption's gamma selection needs held-out windows of the calibration dataset "
                            f"({e}); pass gamma=<value> to skip the selection") from None


@torch.no_grad()
def select_gamma(stats, base_values: np.ndarray, r, target: float, metric: str, grid=GAMMA_GRID,
                 clip: float = CLIP, center: str = "mean", heldout=None, s_min: float = 0.0,
                 s_max: float = 0.99) -> tuple[float, dict]:
    """γ from ``grid`` with the lowest held-out NLL of the model pruned (``metric``, sequential
    on ``stats.calib``) with the corrected, budget-fitted plan; weights restored afterwards.
    Returns (γ, {γ: NLL}); ties go to the smallest γ."""
    from prunekit.allocation.plan import fit_budget
    from prunekit.core.engine import window_nll
    from prunekit.core.snapshot import weight_snapshot
    from prunekit.solvers.prune import prune_model
    ids = heldout if heldout is not None else heldout_ids(stats)
    nll = {}
    # the runtime's one snapshot holds the dense weights (on disk offload: the checkpoint itself)
    with weight_snapshot(stats.rt) as snap:
        for g in grid:
            vals = fit_budget(absorption_correction(base_values, r, g, clip, center), stats.sizes, target,
                              s_min, s_max)
            calib = stats.calib.input_ids if metric != "magnitude" else None
            prune_model(stats.rt, calib, vals, metric, batch_size=getattr(stats, "batch_size", 8), progress=False)
            nll[float(g)] = float(window_nll(stats.rt, ids).mean())
            snap.restore()
    best = min(nll, key=lambda g: (nll[g], g))
    return best, nll


def tilt_correlation(delta, base_per_block, target: float) -> float:
    """Pearson correlation between the correction Δ and the base plan's own tilt (S_base − S);
    near +1 the correction double-counts what the base already did; NaN when either is constant."""
    d = np.asarray(delta, dtype=float)
    t = np.asarray(base_per_block, dtype=float) - target
    if d.std() == 0 or t.std() == 0:
        return float("nan")
    return float(np.corrcoef(d, t)[0, 1])


MIN_ETA = 1e-6  # a smaller relative noise is lost in fp32 rounding: no drift, r = 0/0


def _check_absorption(options: dict, target: float | None, num_blocks: int | None) -> None:
    """Absorption's domain beyond the bounds: token lengths 0 (= all) or >= 2 (next-token NLL and
    drift need two positions), and ``base_options`` within the base method's own contract."""
    for k in ("probe_seqlen", "heldout_seqlen"):
        if options[k] == 1:
            raise PrunekitError(f"absorption option '{k}' must be 0 (the calibration length) or >= 2, got 1")
    if options["base_options"]:
        spec(options["base"]).check_options(options["base_options"], num_blocks, target)


@register("absorption", wraps="base", solver_metric="score", reads=("model", "calibration"), check=_check_absorption,
          bounds={"gamma": (0.0, None), "eta": (MIN_ETA, None), "draws": (1, None), "clip": (0.0, None, "(]"),
                  "seed": (0, None), "probe_samples": (0, None), "probe_seqlen": (0, None),
                  "heldout_samples": (1, None), "heldout_seqlen": (0, None)})
def absorption(stats, target: float, base: str = "owl", gamma: float | None = None, eta: float = 1e-2,
               draws: int = 1, clip: float = CLIP, seed: int = 0,
               reduction: Literal["mean_of_ratios", "ratio_of_means"] = "mean_of_ratios",
               depth: Literal["final", "mean"] = "final", final_norm: bool = False, skip_first: bool = True,
               center: Literal["mean", "none"] = "mean", probe_samples: int = 0, probe_seqlen: int = 0,
               perturbation: Literal["prune", "matched", "noise"] = "prune",
               prune_metric: Metric | None = None,
               heldout_samples: int = 4, heldout_seqlen: int = 0,
               heldout: str | None = None,
               base_options: dict | None = None, score: Metric | None = None,
               ) -> SparsityPlan:
    """Absorption-aware correction of a base allocation: s' = s_base + γΔ from absorption coefficients.

    ``base``: any registered allocation (``base_options`` are passed to it); ``gamma`` γ, or None
    (default): chosen from ``GAMMA_GRID`` (λ_corr/c for λ_corr ∈ {0, 0.02, 0.04, 0.08}) on the
    held-out calibration NLL of the pruned model (``heldout_samples`` windows of ``heldout_seqlen``
    tokens, 0 = the calibration length; disjoint from the pruning samples; ``heldout``: another
    dataset name, or a Calibration / (n, seqlen) token tensor to use instead); ``perturbation``:
    ``prune`` (default, [I]: the real pruning perturbation, each block pruned alone at the target
    sparsity with ``prune_metric``), ``matched`` ([I]: noise of the size pruning injects, block by
    block) or ``noise`` (spec: η for every block); ``prune_metric`` defaults to the solver's metric
    (``score``) or wanda; ``eta`` noise scale; ``draws`` noise draws; ``clip`` c; ``seed``;
    ``reduction`` mean_of_ratios | ratio_of_means; ``depth`` final | mean; ``final_norm``;
    ``skip_first`` (exclude position 0); ``center`` mean (spec) | none; ``probe_samples`` /
    ``probe_seqlen`` measure on the first windows / tokens of the calibration set only (0 = all).
    ``score``: the solver's metric, passed on to a base that ranks by it (MRP principle 2) unless
    ``base_options`` sets its own, and used to prune during the γ selection.
    γ = 0 (or target 0) returns the base plan without measuring. Extras: ``absorption_r``, ``absorption_u``,
    ``absorption_delta``, ``base_per_block``, ``tilt_correlation`` (corr of Δ with S_base − S),
    ``gamma_nll`` (held-out NLL per γ when selected) and the base's extras prefixed ``base.``.
    Options: ``base`` the allocation to correct; ``gamma`` γ, the correction strength (None: chosen
    on held-out NLL); ``eta`` noise scale of the probe; ``draws`` noise draws per block; ``clip`` c,
    the bound of u = clip(log r); ``seed`` of the noise draws; ``reduction`` how ratios are averaged
    over tokens; ``depth`` where the absorption is read, after the last block or averaged over
    depth; ``final_norm`` read after the model's final norm; ``skip_first`` leave out position 0;
    ``center`` subtract the mean of u or not; ``probe_samples`` calibration windows the probe uses
    (0 = all); ``probe_seqlen`` tokens per probe window (0 = all); ``perturbation`` what is injected
    into each block, pruning or noise; ``prune_metric`` the solver of the pruning perturbation;
    ``heldout_samples`` held-out windows of the γ selection; ``heldout_seqlen`` tokens per
    held-out window (0 = the calibration length); ``heldout`` another dataset, Calibration or
    token tensor for the γ selection; ``base_options`` options passed to the base allocation;
    ``score`` the solver's metric, passed to a base that ranks by it."""
    base_options = dict(base_options or {})
    if score is not None:  # the solver's metric reaches a base that declared it wants it
        base_options = with_solver_metric(base, base_options, score)
    solver = score or "wanda"
    prune_metric = prune_metric or solver
    base_plan = allocate(base, stats, target, **base_options)
    opts = {"base": base, "gamma": gamma, "eta": float(eta), "draws": int(draws), "clip": float(clip),
            "seed": int(seed), "reduction": reduction, "depth": depth, "final_norm": bool(final_norm),
            "skip_first": bool(skip_first), "center": center, "probe_samples": int(probe_samples),
            "probe_seqlen": int(probe_seqlen), "perturbation": perturbation, "prune_metric": prune_metric,
            "base_options": base_options}
    extras = {f"base.{k}": v for k, v in base_plan.extras.items()}
    extras["base_per_block"] = base_plan.per_block.copy()
    if gamma == 0 or target == 0:  # nothing to correct (at target 0 nothing is pruned, no drift to measure)
        return SparsityPlan(base_plan.values.copy(), base_plan.sizes, target, "absorption", opts,
                            list(base_plan.linear_names), extras)
    r, _ = coefficients_from_stats(stats, eta, draws, seed, skip_first=skip_first, reduction=reduction,
                                   depth=depth, final_norm=final_norm, probe_samples=probe_samples,
                                   probe_seqlen=probe_seqlen, perturbation=perturbation, sparsity=target,
                                   prune_metric=prune_metric)
    u, delta = correction_signal(r, clip, center)
    if gamma is None:
        ho = heldout_ids(stats, heldout_samples, heldout_seqlen, heldout)
        gamma, nll = select_gamma(stats, base_plan.values, r, target, solver, GAMMA_GRID, clip, center, ho)
        extras["gamma_nll"] = {f"{g:.6g}": v for g, v in nll.items()}
        opts.update(gamma_selected=True, gamma_grid=[float(g) for g in GAMMA_GRID], selection_metric=solver,
                    heldout_samples=int(ho.shape[0]), heldout_seqlen=int(ho.shape[1]))
    opts["gamma"] = float(gamma)
    values = absorption_correction(base_plan.values, r, gamma, clip, center)
    extras.update({"absorption_r": r, "absorption_u": u, "absorption_delta": delta,
                   "tilt_correlation": tilt_correlation(delta, base_plan.per_block, target),
                   "pre_budget_per_block": (values * base_plan.sizes).sum(1) / base_plan.sizes.sum(1)})
    return SparsityPlan(values, base_plan.sizes, target, "absorption", opts, list(base_plan.linear_names), extras)
