"""Plan: per-(block, linear) sparsities and the budget fit every method's output goes through."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from prunekit.errors import PrunekitError


@dataclass
class SparsityPlan:
    """Per-(block, linear) sparsities, shape (num_blocks, num_linears), plus provenance."""
    values: np.ndarray
    sizes: np.ndarray
    target: float
    method: str
    options: dict = field(default_factory=dict)
    linear_names: list[str] = field(default_factory=list)
    extras: dict = field(default_factory=dict)  # method diagnostics (e.g. per-block scores)

    @property
    def num_blocks(self) -> int:
        return self.values.shape[0]

    @property
    def per_block(self) -> np.ndarray:
        """Parameter-weighted sparsity of each block."""
        return (self.values * self.sizes).sum(1) / self.sizes.sum(1)

    @property
    def global_sparsity(self) -> float:
        return float((self.values * self.sizes).sum() / self.sizes.sum())

    def to_dict(self) -> dict:
        return {"method": self.method, "options": self.options, "target": self.target,
                "per_block": self.per_block.tolist(), "global": self.global_sparsity,
                "linear_names": self.linear_names,
                "values": self.values.tolist() if not self.is_blockwise else None,
                "extras": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.extras.items()}}

    @property
    def is_blockwise(self) -> bool:
        return bool(np.allclose(self.values, self.values[:, :1]))


def fit_budget(values: np.ndarray, sizes: np.ndarray, target: float, s_min: float = 0.0,
               s_max: float = 0.99, tol: float = 1e-9) -> np.ndarray:
    """Shift ``values`` additively so the weighted mean equals ``target``, clipping to
    [s_min, s_max] and redistributing the residual over the unclipped entries (water-filling:
    bisection on the shift, exact to ``tol``)."""
    values = np.asarray(values, dtype=float)
    sizes = np.broadcast_to(np.asarray(sizes, dtype=float), values.shape)
    if not (s_min <= target <= s_max):
        raise PrunekitError(f"target {target} is outside [s_min={s_min}, s_max={s_max}]")
    total = sizes.sum()

    def mean_at(shift):
        return (np.clip(values + shift, s_min, s_max) * sizes).sum() / total

    lo, hi = s_min - values.max() - 1.0, s_max - values.min() + 1.0
    for _ in range(200):  # mean_at is monotone non-decreasing in the shift
        mid = 0.5 * (lo + hi)
        if mean_at(mid) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo < tol * 1e-3:
            break
    out = np.clip(values + 0.5 * (lo + hi), s_min, s_max)
    # remove the last rounding residual on the interior entries (keeps the mean exact)
    free = (out > s_min) & (out < s_max)
    if free.any():
        out[free] += (target * total - (out * sizes).sum()) / sizes[free].sum()
        out = np.clip(out, s_min, s_max)
    return out


def check_target(target: float) -> float:
    target = float(target)
    if not (0.0 <= target < 1.0):
        raise PrunekitError(f"sparsity {target} is outside [0, 1); pass a fraction such as 0.7")
    return target


def block_plan(stats, target, values, method, options, extras) -> SparsityPlan:
    """A plan from per-block (L,) or per-matrix (L, K) values, sized by ``stats``."""
    values = np.asarray(values, dtype=float)
    sizes = np.asarray(stats.sizes, dtype=float)
    if values.ndim == 1:
        values = np.repeat(values[:, None], sizes.shape[1], axis=1)
    return SparsityPlan(values, sizes, float(target), method, dict(options),
                        list(stats.linear_names), dict(extras))
