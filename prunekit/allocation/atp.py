"""ATP: a linearly increasing sparsity schedule over depth (docs/methods.md §7)."""
from __future__ import annotations

import numpy as np

from prunekit.allocation.plan import SparsityPlan, block_plan, check_target
from prunekit.allocation.registry import register
from prunekit.errors import PrunekitError


def atp_schedule(num_blocks: int, target: float, beta: float) -> np.ndarray:
    """ATP's arithmetic schedule ``s_i = S − β(L−1)/2 + β·i`` (i = 0..L−1; §7 [S]): mean S,
    increasing with depth for β > 0."""
    target = check_target(target)
    if num_blocks < 1:
        raise PrunekitError(f"ATP needs at least one block, got {num_blocks}")
    i = np.arange(num_blocks, dtype=float)
    return target - beta * (num_blocks - 1) / 2.0 + beta * i


@register("atp", bounds={"beta": (0.0, 1.0)})
def atp(stats, target: float, beta: float = 0.02) -> SparsityPlan:
    """ATP: sparsity increases linearly with depth, s_i = S − β(L−1)/2 + β·i.

    Options: ``beta`` β, the step between consecutive blocks. The paper picks β on a small grid by
    perplexity (§7 [S]); the default 0.02 is an [I] choice (keeps the range within ±0.3 for 32
    blocks). β must be ≥ 0 (the schedule is monotonically increasing by construction); values that
    leave [s_min, s_max] are clipped by ``allocate`` with the budget restored.
    No statistics needed. Extras: ``raw`` (schedule before budget/bounds).
    """
    target = check_target(target)
    s = atp_schedule(int(stats.num_blocks), target, float(beta))
    return block_plan(stats, target, s, "atp", {"beta": float(beta)}, {"raw": s})
