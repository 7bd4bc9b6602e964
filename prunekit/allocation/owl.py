"""OWL: outlier-weighted layerwise sparsity (Yin et al. 2024; docs/methods.md §4)."""
from __future__ import annotations


import numpy as np

from prunekit.allocation.plan import SparsityPlan, block_plan, check_target
from prunekit.allocation.registry import register
from prunekit.errors import PrunekitError
from prunekit.vocabulary import Metric


def owl_mapping(lod, target: float, lam: float) -> np.ndarray:
    """OWL's per-block sparsity from the layerwise outlier distribution (luuyin/OWL, [V-code]).

    ``x_l = (LOD_l − min LOD)/(max LOD − min LOD)·2λ``; ``s_l = S − (x_l − mean x)``, so the
    spread max−min is exactly 2λ and the unweighted mean is S; more outliers ⇒ lower sparsity.
    Note: the centring is on mean(x), not on λ, so the values lie in [S − 2λ + x̄, S + x̄]
    (x̄ = mean x ∈ [0, 2λ]); they equal [S−λ, S+λ] only when x̄ = λ (docs/methods.md §4 says
    "s ∈ [S−λ, S+λ]", which holds for the spread, not for the end points).

    [I] degenerate input (all LOD equal, or a single block) ⇒ uniform ``S`` (the reference code
    divides by zero). The reference's ``s <= 0 → 0.01`` guard is not applied here: the returned
    vector is the raw mapping, and ``allocate(..., s_min=...)`` clips while keeping the budget exact.
    """
    lod = np.asarray(lod, dtype=float).reshape(-1)
    target = check_target(target)
    if lod.size == 0 or not np.all(np.isfinite(lod)):
        raise PrunekitError("OWL needs a non-empty, finite outlier-ratio vector (one value per block)")
    span = lod.max() - lod.min()
    if span <= 0:
        return np.full(lod.shape, target)
    x = (lod - lod.min()) / span * (2.0 * lam)
    density = x - x.mean() + (1.0 - target)
    return 1.0 - density


# m > 0: at m = 0 every non-zero score is an "outlier" (OWL eq. 3 needs M > 0)
@register("owl", reads=("outlier_ratios",), bounds={"m": (0.0, None, "(]"), "lam": (0.0, 1.0)})
def owl(stats, target: float, m: float = 5.0, lam: float = 0.08,
        metric: Metric = "wanda") -> SparsityPlan:
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
    target = check_target(target)
    lod = np.asarray(stats.outlier_ratios(float(m), metric), dtype=float)
    s = owl_mapping(lod, target, lam)
    return block_plan(stats, target, s, "owl", {"m": float(m), "lam": float(lam), "metric": metric},
                 {"lod": lod, "raw": s, "degenerate": bool(np.ptp(lod) == 0)})
