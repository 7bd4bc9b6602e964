"""OWL (prunekit/allocation/owl.py, docs/methods.md §4): mapping properties (spread 2λ, mean S,
more outliers ⇒ less sparsity) against the definition, and the direction on toys (§8.3)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_calib, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.allocation.owl import owl_mapping
from prunekit.allocation.registry import allocate, spec
from prunekit.errors import PrunekitError
from prunekit.scoring.statistics import Statistics

# ---------------------------------------------------------------- OWL mapping properties
lods = st.lists(st.floats(0.0, 30.0, allow_nan=False), min_size=2, max_size=40)


@settings(max_examples=60, deadline=None)
@given(lod=lods, target=st.floats(0.2, 0.8), lam=st.floats(0.0, 0.15))
def test_owl_mapping_spread_mean_direction(lod, target, lam):
    lod = np.array(lod)
    s = owl_mapping(lod, target, lam)
    assert abs(s.mean() - target) < 1e-12
    if np.ptp(lod) == 0:
        np.testing.assert_allclose(s, target)  # degenerate -> uniform
        return
    assert abs(np.ptp(s) - 2 * lam) < 1e-12
    # mean-centred (not mid-range-centred): s ∈ [S − 2λ + x̄, S + x̄], x̄ = mean of the 0..2λ scale
    xbar = np.mean((lod - lod.min()) / np.ptp(lod)) * 2 * lam
    assert s.max() == pytest.approx(target + xbar, abs=1e-12)
    assert s.min() == pytest.approx(target - 2 * lam + xbar, abs=1e-12)
    # more outliers -> less sparsity (§8.3), and the map is affine in LOD
    order = np.argsort(lod, kind="stable")
    assert np.all(np.diff(s[order]) <= 1e-12)
    i, j = int(np.argmax(lod)), int(np.argmin(lod))
    assert s[j] - s[i] == pytest.approx(2 * lam, abs=1e-12)


def test_owl_mapping_degenerate_and_errors():
    np.testing.assert_allclose(owl_mapping([3.0, 3.0, 3.0], 0.7, 0.08), 0.7)
    np.testing.assert_allclose(owl_mapping([1.0], 0.5, 0.08), 0.5)
    with pytest.raises(PrunekitError):
        owl_mapping([1.0, np.nan], 0.5, 0.08)
    with pytest.raises(PrunekitError):  # option values: the registry contract refuses them
        spec("owl").check_options({"lam": -0.1})


def test_owl_plan_records_options_and_extras(tiny_stats):
    stats = tiny_stats
    p = allocate("owl", stats, 0.6, m=4.0)
    assert p.options["m"] == 4.0 and p.options["lam"] == 0.08 and p.options["metric"] == "wanda"
    np.testing.assert_allclose(p.extras["lod"], stats.outlier_ratios(4.0, "wanda"))
    np.testing.assert_allclose(p.per_block, owl_mapping(p.extras["lod"], 0.6, 0.08), atol=1e-9)
    if np.ptp(p.extras["lod"]) > 0:
        assert np.ptp(p.per_block) == pytest.approx(0.16, abs=1e-9)


class _StubStats:
    """Just enough of Statistics for OWL: controlled per-block outlier ratios."""
    def __init__(self, lod, k=3):
        self.lod = np.asarray(lod, dtype=float)
        self.num_blocks = self.lod.size
        self.sizes = np.full((self.lod.size, k), 100.0)
        self.linear_names = [f"l{i}" for i in range(k)]

    def outlier_ratios(self, M=5.0, metric="wanda"):
        return self.lod


def test_owl_direction_more_outliers_less_sparsity():
    lod = np.array([2.0, 9.0, 1.0, 4.0, 4.0])
    p = allocate("owl", _StubStats(lod), 0.6, lam=0.1)
    assert int(np.argmin(p.per_block)) == 1 and int(np.argmax(p.per_block)) == 2
    assert p.per_block[3] == pytest.approx(p.per_block[4])
    assert p.per_block[0] > p.per_block[3]


@torch.no_grad()
def test_owl_outlier_injection_lowers_that_blocks_sparsity():
    def plan(inject):
        model = tiny_model(seed=3)
        lay = Statistics(model, None, cache=False, progress=False).layout
        if inject:  # large weights in the LAST block: more Wanda outliers there, upstream unchanged
            g = torch.Generator().manual_seed(6)
            for lin in lay.linears(3).values():
                w = lin.weight
                idx = torch.randperm(w.numel(), generator=g)[: w.numel() // 50]
                w.view(-1)[idx] *= 40.0
        st_ = Statistics(model, tiny_calib(n=4, seqlen=32, seed=1), cache=False, progress=False)
        p = allocate("owl", st_, 0.6)
        assert st_.dense_passes == 1
        return p
    base, inj = plan(False), plan(True)
    np.testing.assert_allclose(base.extras["lod"][:3], inj.extras["lod"][:3])
    assert inj.extras["lod"][3] > base.extras["lod"][3] + 0.5
    # the injected block now has far more outliers than the rest: OWL gives it the minimum, S−2λ+x̄
    assert int(np.argmin(inj.per_block)) == 3
    assert inj.per_block[3] < base.per_block[3] - 0.02
