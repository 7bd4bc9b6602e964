"""AlphaPruning: heavy-tailed self-regularisation metric α per layer (Lu et al. 2024; docs/methods.md §5)."""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

from prunekit.utils import bars_disabled
from prunekit.allocation.plan import SparsityPlan, block_plan, check_target
from prunekit.allocation.registry import register
from prunekit.errors import PrunekitError

EsdEstimator = Literal["xmin_peak", "xmin_mid"]
AlphaMapping = Literal["block_wise", "per_matrix"]


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
    ev = torch.as_tensor(eigs).detach().reshape(-1).to("cpu", torch.float32)
    ev = torch.sort(ev[ev > 0]).values
    N = ev.numel()
    if N < 2:
        raise PrunekitError(f"ESD alpha needs at least 2 positive eigenvalues, got {N}")
    ev64 = ev.double().numpy()
    log_ev = np.log(ev64)
    suffix = np.cumsum(log_ev[::-1])[::-1]  # suffix[i] = Σ_{k≥i} ln λ_k

    if estimator == "xmin_mid":  # else xmin_peak (choices checked by the registry)
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
    # one LAPACK thread: a single small SVD does not gain from more, and on a CPU shared with other
    # jobs multi-threaded svdvals waits on busy cores (576 × 1536: 7 s with 2 threads vs 0.15 s)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sv = torch.linalg.svdvals(W.detach().to(torch.float32))
    finally:
        torch.set_num_threads(n)
    return hill_alpha_from_eigs(sv.pow(2), estimator, fix_lower_bound, bins)


def model_alphas(stats, estimator: str = "xmin_peak", fix_lower_bound: bool = False) -> np.ndarray:
    """Per-(block, linear) ESD alphas of the dense model, shape (L, K), cached on disk via
    ``stats.cached('esd_alpha', ..., data=False)`` (weights only, no calibration data)."""
    def compute():
        from prunekit.utils import tqdm
        L, names = stats.num_blocks, list(stats.linear_names)
        out = torch.zeros(L, len(names), dtype=torch.float64)
        for i in tqdm(range(L), desc="ESD alphas", disable=bars_disabled(getattr(stats, "progress", True))):
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
    target = check_target(target)
    if a.ndim != 2 or n.shape != a.shape:
        raise PrunekitError(f"alphas {a.shape} and sizes {n.shape} must both be (blocks, linears)")
    if not np.all(np.isfinite(a)):
        raise PrunekitError("ESD alphas contain inf/NaN (a constant or all-zero weight matrix?); "
                            "use estimator='xmin_mid' or check the model weights")
    if mapping == "block_wise":  # else per_matrix (choices checked by the registry)
        a = np.repeat(a.mean(axis=1, keepdims=True), a.shape[1], axis=1)
    span = a.max() - a.min()
    if span <= 0:
        return np.full(a.shape, target)
    r = (a - a.min()) / span * (2.0 * epsilon) + (1.0 - epsilon)
    return r * (target * n.sum() / (n * r).sum())


# ε < 1: at ε = 1 the least-sparse matrix gets r = 1 − ε = 0 (§5 mapping), the range S(1±ε) collapses at one end
@register("alphapruning", reads=("weights",), bounds={"epsilon": (0.0, 1.0, "[)")})
def alphapruning(stats, target: float, epsilon: float = 0.3, estimator: EsdEstimator = "xmin_peak",
                 fix_lower_bound: bool = False, mapping: AlphaMapping = "block_wise") -> SparsityPlan:
    """AlphaPruning: heavier-tailed weight spectra (smaller PL α) are pruned less, range S(1±ε).

    Options: ``epsilon`` ε, the half-width of the range (argparse default 0.3; per-model values in docs/methods.md §5 table,
    e.g. LLaMA-7B wanda 0.2), ``estimator`` 'xmin_peak' (reference) | 'xmin_mid',
    ``fix_lower_bound`` (False reproduces the reference's log-vs-linear xmin lower bound; True is
    the [I] fix), ``mapping`` 'block_wise' (reference default) | 'per_matrix'.
    Needs no calibration data (weights only); alphas are cached per model.
    Extras: ``alpha`` (L, K) per-matrix alphas, ``alpha_block`` (L,) block means.
    """
    target = check_target(target)
    alphas = model_alphas(stats, estimator, fix_lower_bound)
    s = alpha_mapping(alphas, stats.sizes, target, epsilon, mapping)
    return block_plan(stats, target, s, "alphapruning",
                 {"epsilon": float(epsilon), "estimator": estimator,
                  "fix_lower_bound": bool(fix_lower_bound), "mapping": mapping},
                 {"alpha": alphas, "alpha_block": alphas.mean(axis=1), "raw": s})

