"""Baseline allocation methods: OWL, AlphaPruning and ATP (ALGORITHMS.md §4, §5, §7).

Each method is registered with ``@register`` and has the plugin signature
``fn(stats, target, **options) -> SparsityPlan``; ``prunekit.allocate.allocate`` then enforces
budget exactness and the [s_min, s_max] bounds. The pure mapping functions (``owl_mapping``,
``alpha_mapping``, ``atp_schedule``) and the ESD estimator (``esd_alpha``,
``hill_alpha_from_eigs``) are exposed separately so they can be tested without a model.

Direction conventions (§8.3): OWL — more outliers (LOD ↑) ⇒ lower sparsity; AlphaPruning — larger
α (lighter-tailed ESD) ⇒ higher sparsity; ATP — deeper block ⇒ higher sparsity.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .allocate import SparsityPlan, register
from .errors import PrunekitError

__all__ = ["owl", "owl_mapping", "alphapruning", "alpha_mapping", "esd_alpha",
           "hill_alpha_from_eigs", "model_alphas", "atp", "atp_schedule"]


def _check_target(target: float) -> float:
    target = float(target)
    if not (0.0 <= target < 1.0):
        raise PrunekitError(f"sparsity {target} is outside [0, 1); pass a fraction such as 0.7")
    return target


def _plan(stats, target, values, method, options, extras) -> SparsityPlan:
    values = np.asarray(values, dtype=float)
    sizes = np.asarray(stats.sizes, dtype=float)
    if values.ndim == 1:
        values = np.repeat(values[:, None], sizes.shape[1], axis=1)
    return SparsityPlan(values, sizes, float(target), method, dict(options),
                        list(stats.linear_names), dict(extras))


# ============================================================================ OWL (§4)

def owl_mapping(lod, target: float, lam: float) -> np.ndarray:
    """OWL's per-block sparsity from the layerwise outlier distribution (luuyin/OWL, [V-code]).

    ``x_l = (LOD_l − min LOD)/(max LOD − min LOD)·2λ``; ``s_l = S − (x_l − mean x)``, so the
    spread max−min is exactly 2λ and the unweighted mean is S; more outliers ⇒ lower sparsity.
    Note: the centring is on mean(x), not on λ, so the values lie in [S − 2λ + x̄, S + x̄]
    (x̄ = mean x ∈ [0, 2λ]); they equal [S−λ, S+λ] only when x̄ = λ (ALGORITHMS.md §4 says
    "s ∈ [S−λ, S+λ]", which holds for the spread, not for the end points).

    [I] degenerate input (all LOD equal, or a single block) ⇒ uniform ``S`` (the reference code
    divides by zero). The reference's ``s <= 0 → 0.01`` guard is not applied here: the returned
    vector is the raw mapping, and ``allocate(..., s_min=...)`` clips while keeping the budget exact.
    """
    lod = np.asarray(lod, dtype=float).reshape(-1)
    target = _check_target(target)
    if lod.size == 0 or not np.all(np.isfinite(lod)):
        raise PrunekitError("OWL needs a non-empty, finite outlier-ratio vector (one value per block)")
    if lam < 0:
        raise PrunekitError(f"OWL lambda must be >= 0, got {lam}")
    span = lod.max() - lod.min()
    if span <= 0:
        return np.full(lod.shape, target)
    x = (lod - lod.min()) / span * (2.0 * lam)
    density = x - x.mean() + (1.0 - target)
    return 1.0 - density


@register("owl")
def owl(stats, target: float, m: float = 5.0, lam: float = 0.08, metric: str = "wanda") -> SparsityPlan:
    """OWL: blocks with more Wanda-score outliers (LOD) are pruned less; spread 2λ around mean S.

    Options (defaults = the OWL README setting for LLaMA-7B at 70%, [V-code]):
      ``m``      outlier threshold M: a score is an outlier if ``A > M·mean(A_block)`` (argparse
                 default is 3; README commands use 5).
      ``lam``    λ, half-width of the sparsity range around the target.
      ``metric`` score used for the LOD. The reference always uses the dense Wanda score
                 ``|W|·||X_j||`` whatever the pruning solver ([V-code]); 'magnitude' / 'sparsegpt'
                 are [I] variants for ablations only.
    One sparsity per decoder block, shared by all its linears (the code's behaviour, §4 pitfalls).
    Extras: ``lod`` (per-block outlier ratio in %), ``raw`` (mapping before budget/bounds).
    """
    target = _check_target(target)
    if not m > 0:
        raise PrunekitError(f"OWL outlier threshold m must be > 0, got {m}")
    lod = np.asarray(stats.outlier_ratios(float(m), metric), dtype=float)
    s = owl_mapping(lod, target, lam)
    return _plan(stats, target, s, "owl", {"m": float(m), "lam": float(lam), "metric": metric},
                 {"lod": lod, "raw": s, "degenerate": bool(np.ptp(lod) == 0)})


# ============================================================================ AlphaPruning (§5)

ESTIMATORS = ("xmin_peak", "xmin_mid")
MAPPINGS = ("block_wise", "per_matrix")


def _hill(log_ev: np.ndarray, suffix: np.ndarray, i: int) -> float:
    """Hill/MLE of the density exponent with xmin = λ_i: α = 1 + n / Σ_{k≥i} ln(λ_k/λ_i)."""
    n = log_ev.size - i
    denom = suffix[i] - n * log_ev[i]
    return math.inf if denom <= 0 else 1.0 + n / denom


def hill_alpha_from_eigs(eigs, estimator: str = "xmin_peak", fix_lower_bound: bool = False,
                         bins: int = 100) -> float:
    """PL_Alpha_Hill of an eigenvalue spectrum (AlphaPruning ``net_esd_estimator``, §5 [V-code]).

    Estimates the exponent α of a power-law density ``p(λ) ∝ λ^-α`` for λ ≥ xmin:

    - ``xmin_peak`` (default): histogram of ``log10 λ`` with ``bins`` (=100) bins on [min, max]
      (``torch.histc``, fp32); ``xmin2 = 10**left_edge[argmax counts]``. Candidates are the
      eigenvalues ``λ_i`` (i ≤ N−2, ascending) with ``λ_i ≤ 1.5·xmin2``; for each, the Hill MLE
      ``α_i = 1 + n/(Σ_{k≥i} ln λ_k − n ln λ_i)`` (n = N−i) and the KS distance
      ``D_i = max_k |1 − (λ_{i+k}/λ_i)^{1−α_i} − k/n|``; the answer is α at the first argmin of D
      (non-candidates have D = 1, α = 0).
      Lower bound: the reference skips candidates with ``λ_i < log10(0.95·xmin2)`` — it compares
      an eigenvalue with a log, so the bound is effectively absent. That is reproduced by default;
      ``fix_lower_bound=True`` uses ``λ_i < 0.95·xmin2`` instead ([I] fix).
    - ``xmin_mid``: a single Hill estimate with xmin = λ_{⌊N/2⌋}.

    [I] choices: eigenvalues ≤ 0 (exact zeros) are dropped because their log is undefined (the
    reference keeps them and would produce -inf/NaN); candidates with an infinite α (all
    eigenvalues above xmin equal) are treated as non-candidates; the histogram is fp32 like the
    reference, the Hill sums and KS distances are float64 (differences ~1e-6).
    """
    if estimator not in ESTIMATORS:
        raise PrunekitError(f"unknown ESD estimator '{estimator}'; choose from {', '.join(ESTIMATORS)}")
    ev = torch.as_tensor(eigs).detach().reshape(-1).to("cpu", torch.float32)
    ev = torch.sort(ev[ev > 0]).values
    N = ev.numel()
    if N < 2:
        raise PrunekitError(f"ESD alpha needs at least 2 positive eigenvalues, got {N}")
    ev64 = ev.double().numpy()
    log_ev = np.log(ev64)
    suffix = np.cumsum(log_ev[::-1])[::-1]  # suffix[i] = Σ_{k≥i} ln λ_k

    if estimator == "xmin_mid":
        a = _hill(log_ev, suffix, N // 2)
        if not math.isfinite(a):
            raise PrunekitError("ESD alpha is undefined: the upper half of the spectrum is constant")
        return a

    l10 = torch.log10(ev)
    lo, hi = float(l10.min()), float(l10.max())
    counts = torch.histc(l10, bins=bins, min=lo, max=hi)
    edges = torch.linspace(lo, hi, bins + 1)
    xmin2 = float(10 ** edges[int(torch.argmax(counts))])
    lower = 0.95 * xmin2 if fix_lower_bound else math.log10(0.95 * xmin2)
    upper = 1.5 * xmin2

    alphas = np.zeros(N - 1)
    Ds = np.ones(N - 1)
    ev32 = ev.numpy()  # candidate thresholds compared in fp32, as in the reference
    for i in range(N - 1):
        if ev32[i] > upper:
            break  # sorted ascending: no later candidate either
        if ev32[i] < lower:
            continue
        a = _hill(log_ev, suffix, i)
        if not math.isfinite(a):
            continue
        alphas[i] = a
        if a > 1:
            n = N - i
            k = np.arange(n)
            # fitted power-law CDF vs empirical CDF on the tail λ_{i..N-1}
            cdf = 1.0 - np.exp((1.0 - a) * (log_ev[i:] - log_ev[i]))
            Ds[i] = np.abs(cdf - k / n).max()
    return float(alphas[int(np.argmin(Ds))])


def esd_alpha(W: torch.Tensor, estimator: str = "xmin_peak", fix_lower_bound: bool = False,
              bins: int = 100) -> float:
    """PL_Alpha_Hill of a weight matrix: eigenvalues ``svdvals(W)^2`` (fp32, no 1/N scaling, §5
    step 1) passed to ``hill_alpha_from_eigs``."""
    if W.ndim != 2:
        raise PrunekitError(f"esd_alpha needs a 2-D weight matrix, got shape {tuple(W.shape)}")
    sv = torch.linalg.svdvals(W.detach().to(torch.float32))
    return hill_alpha_from_eigs(sv.pow(2), estimator, fix_lower_bound, bins)


def model_alphas(stats, estimator: str = "xmin_peak", fix_lower_bound: bool = False) -> np.ndarray:
    """Per-(block, linear) ESD alphas of the dense model, shape (L, K), cached on disk via
    ``stats.cached('esd_alpha', ..., data=False)`` (weights only, no calibration data)."""
    def compute():
        from tqdm.auto import tqdm
        L, names = stats.num_blocks, list(stats.linear_names)
        out = torch.zeros(L, len(names), dtype=torch.float64)
        for i in tqdm(range(L), desc="ESD alphas", disable=not getattr(stats, "progress", True)):
            for k, n in enumerate(names):
                out[i, k] = esd_alpha(stats.weight(i, n), estimator, fix_lower_bound)
        return {"alpha": out}
    got = stats.cached("esd_alpha", compute, data=False, estimator=estimator,
                       fix_lower_bound=bool(fix_lower_bound))
    return got["alpha"].double().numpy()


def alpha_mapping(alphas, sizes, target: float, epsilon: float = 0.3,
                  mapping: str = "block_wise") -> np.ndarray:
    """AlphaPruning's ``ww_sparsity`` mapping (§5 [V-code]) from per-matrix alphas (L, K).

    ``block_wise`` (default): each matrix gets the unweighted mean α of its block. Then
    ``r = (α − min α)/(max α − min α)·2ε + (1−ε)`` (multiplicative range [1−ε, 1+ε]; larger α ⇒
    more sparsity) and the exact parameter-weighted rescale ``s = r·S·Σn/Σ(n·r)``.
    ``per_matrix``: the same mapping on the per-matrix alphas directly.
    [I] all α equal ⇒ uniform S (the reference divides by zero). No clipping here (as in the
    reference); ``allocate`` clips to [s_min, s_max] and restores the budget.
    """
    a = np.asarray(alphas, dtype=float)
    n = np.asarray(sizes, dtype=float)
    target = _check_target(target)
    if a.ndim != 2 or n.shape != a.shape:
        raise PrunekitError(f"alphas {a.shape} and sizes {n.shape} must both be (blocks, linears)")
    if not np.all(np.isfinite(a)):
        raise PrunekitError("ESD alphas contain inf/NaN (a constant or all-zero weight matrix?); "
                            "use estimator='xmin_mid' or check the model weights")
    if not (0.0 <= epsilon < 1.0):
        raise PrunekitError(f"AlphaPruning epsilon must be in [0, 1), got {epsilon}")
    if mapping == "block_wise":
        a = np.repeat(a.mean(axis=1, keepdims=True), a.shape[1], axis=1)
    elif mapping != "per_matrix":
        raise PrunekitError(f"unknown AlphaPruning mapping '{mapping}'; choose from {', '.join(MAPPINGS)}")
    span = a.max() - a.min()
    if span <= 0:
        return np.full(a.shape, target)
    r = (a - a.min()) / span * (2.0 * epsilon) + (1.0 - epsilon)
    return r * (target * n.sum() / (n * r).sum())


@register("alphapruning")
def alphapruning(stats, target: float, epsilon: float = 0.3, estimator: str = "xmin_peak",
                 fix_lower_bound: bool = False, mapping: str = "block_wise") -> SparsityPlan:
    """AlphaPruning: heavier-tailed weight spectra (smaller PL α) are pruned less, range S(1±ε).

    Options: ``epsilon`` ε (argparse default 0.3; per-model values in ALGORITHMS.md §5 table,
    e.g. LLaMA-7B wanda 0.2), ``estimator`` 'xmin_peak' (reference) | 'xmin_mid',
    ``fix_lower_bound`` (False reproduces the reference's log-vs-linear xmin lower bound; True is
    the [I] fix), ``mapping`` 'block_wise' (reference default) | 'per_matrix'.
    Needs no calibration data (weights only); alphas are cached per model.
    Extras: ``alpha`` (L, K) per-matrix alphas, ``alpha_block`` (L,) block means.
    """
    target = _check_target(target)
    if estimator not in ESTIMATORS:
        raise PrunekitError(f"unknown ESD estimator '{estimator}'; choose from {', '.join(ESTIMATORS)}")
    if mapping not in MAPPINGS:
        raise PrunekitError(f"unknown AlphaPruning mapping '{mapping}'; choose from {', '.join(MAPPINGS)}")
    alphas = model_alphas(stats, estimator, fix_lower_bound)
    s = alpha_mapping(alphas, stats.sizes, target, epsilon, mapping)
    return _plan(stats, target, s, "alphapruning",
                 {"epsilon": float(epsilon), "estimator": estimator,
                  "fix_lower_bound": bool(fix_lower_bound), "mapping": mapping},
                 {"alpha": alphas, "alpha_block": alphas.mean(axis=1), "raw": s})


# ============================================================================ ATP (§7)

def atp_schedule(num_blocks: int, target: float, beta: float) -> np.ndarray:
    """ATP's arithmetic schedule ``s_i = S − β(L−1)/2 + β·i`` (i = 0..L−1; §7 [S]): mean S,
    increasing with depth for β > 0."""
    target = _check_target(target)
    if num_blocks < 1:
        raise PrunekitError(f"ATP needs at least one block, got {num_blocks}")
    i = np.arange(num_blocks, dtype=float)
    return target - beta * (num_blocks - 1) / 2.0 + beta * i


@register("atp")
def atp(stats, target: float, beta: float = 0.02) -> SparsityPlan:
    """ATP: sparsity increases linearly with depth, s_i = S − β(L−1)/2 + β·i.

    Option ``beta`` β: step between consecutive blocks. The paper picks β on a small grid by
    perplexity (§7 [S]); the default 0.02 is an [I] choice (keeps the range within ±0.3 for 32
    blocks). β must be ≥ 0 (the schedule is monotonically increasing by construction); values that
    leave [s_min, s_max] are clipped by ``allocate`` with the budget restored.
    No statistics needed. Extras: ``raw`` (schedule before budget/bounds).
    """
    target = _check_target(target)
    if not (beta >= 0 and math.isfinite(beta)):
        raise PrunekitError(f"ATP beta must be a finite number >= 0, got {beta}")
    s = atp_schedule(int(stats.num_blocks), target, float(beta))
    return _plan(stats, target, s, "atp", {"beta": float(beta)}, {"raw": s})
