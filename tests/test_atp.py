"""ATP (prunekit/allocation/atp.py, docs/methods.md §7): the arithmetic schedule s_i = S − β(L−1)/2 + β·i."""
from __future__ import annotations

import numpy as np
import pytest

from prunekit.allocation.atp import atp_schedule
from prunekit.allocation.registry import allocate


# ---------------------------------------------------------------- ATP
def test_atp_schedule_increasing_mean_step():
    s = atp_schedule(8, 0.6, 0.02)
    assert np.all(np.diff(s) > 0)
    np.testing.assert_allclose(np.diff(s), 0.02)
    assert s.mean() == pytest.approx(0.6, abs=1e-12)
    assert s[0] == pytest.approx(0.6 - 0.02 * 7 / 2)


def test_atp_plan_records_options_and_extras(tiny_stats):
    t = allocate("atp", tiny_stats, 0.6, beta=0.05)
    assert t.options["beta"] == 0.05
    assert np.all(np.diff(t.per_block) > 0)  # ATP direction: increasing with depth
    np.testing.assert_allclose(np.diff(t.per_block), 0.05, atol=1e-9)
    assert t.to_dict()["extras"]["raw"] == pytest.approx(list(t.per_block), abs=1e-9)
