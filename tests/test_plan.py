"""Plans and the budget fit (prunekit/allocation/plan.py, docs/methods.md §8.1)."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.allocation.plan import fit_budget


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1, 2), min_size=2, max_size=12), st.floats(0.05, 0.95),
       st.lists(st.integers(1, 5), min_size=12, max_size=12))
def test_fit_budget_is_exact_and_bounded(vals, target, sizes):
    v = np.array(vals)
    sz = np.array(sizes[: len(v)], dtype=float)
    out = fit_budget(v, sz, target, 0.0, 0.99)
    assert abs((out * sz).sum() / sz.sum() - target) < 1e-6
    assert out.min() >= 0.0 and out.max() <= 0.99
    # order preserved (an additive shift with clipping is monotone)
    order = np.argsort(v, kind="stable")
    assert np.all(np.diff(out[order]) >= -1e-12)
