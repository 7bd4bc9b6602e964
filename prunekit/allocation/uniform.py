"""Uniform: every linear at the target sparsity."""
from __future__ import annotations

import numpy as np

from prunekit.allocation.registry import register


@register("uniform", exact=True)
def uniform(stats, target: float) -> np.ndarray:
    """Uniform: every linear pruned at the target sparsity."""
    return np.full(np.asarray(stats.sizes).shape, float(target))
