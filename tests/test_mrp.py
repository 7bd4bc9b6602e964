"""MRP allocation (prunekit/allocation/mrp.py, docs/methods.md §1) on tiny random models.

Every check compares against an independent computation: budget identities, brute-force masks from
the solvers' own mask functions."""
import numpy as np
import pytest
import torch
from conftest import tiny_calib, tiny_model

from prunekit.allocation import mrp
from prunekit.allocation.registry import allocate
from prunekit.core.architectures import layout
from prunekit.experiments import mrp_findings as analysis
from prunekit.scoring.statistics import Statistics
from prunekit.solvers.masks import _global_mask, magnitude_mask, wanda_mask
from prunekit.solvers.prune import prune_model

pytestmark = pytest.mark.usefixtures("one_thread")  # shared fixture in conftest


def _copy_weights(stats) -> dict:
    """Test-local copy of every block linear (the brute forces below write weights directly)."""
    lay = stats.layout
    return {(i, n): m.weight.detach().to("cpu", copy=True) for i in range(lay.num_blocks)
            for n, m in lay.linears(i).items()}


@torch.no_grad()
def _put_back(stats, dense: dict) -> None:
    lay = stats.layout
    for (i, n), w in dense.items():
        lay.linears(i)[n].weight.copy_(w)


L = 4


@torch.no_grad()
def heterogeneous_model():
    """Block 0 gets 3% heavy outlier weights (-> low NOR, should keep the lowest sparsity);
    block 2's MLP input norm gets a few huge channels (Wanda-only outliers)."""
    model = tiny_model()
    lay = layout(model)
    g = torch.Generator().manual_seed(1)
    for lin in lay.linears(0).values():
        pick = torch.rand(lin.weight.shape, generator=g) < 0.03
        lin.weight[pick] *= 25
    ln = lay.blocks[2].post_attention_layernorm.weight
    ln[:4] = 40.0
    return model


@pytest.fixture(scope="module")
def het():
    model = heterogeneous_model()
    return Statistics(model, tiny_calib(n=4, seqlen=16), cache=False, progress=False)


def test_plan_budget_exact_in_bounds_non_uniform(het):
    for target in (0.5, 0.63, 0.8):
        plan = allocate("mrp", het, target, delta=0.01, reading="frozen")
        assert abs(plan.global_sparsity - target) < 1e-9
        assert (plan.values >= 0).all() and (plan.values <= 0.95 + 1e-12).all()
        assert plan.per_block.max() - plan.per_block.min() > 0.05, plan.per_block
        assert plan.is_blockwise
        # MRP's own exactness, before allocate's fit_budget could hide a miss
        raw = mrp.mrp(het, target, reading="frozen")
        assert abs(raw.global_sparsity - target) < 1e-9
        assert raw.extras["steps"] >= round((target - raw.options["s0"]) / 0.01) - 1
        # direction (docs/methods.md §8.3): under the weight-only score the outlier-heavy block 0 is the
        # least redundant, so it is pruned least
        mag = allocate("mrp", het, target, score="magnitude", reading="frozen")
        assert int(np.argmin(mag.per_block)) == 0, mag.per_block
        assert mag.extras["nor_initial"].argmin() == 0


def test_plan_respects_cap_and_bad_options(het):
    plan = allocate("mrp", het, 0.8, delta=0.05, k=2, s_cap=0.85)
    assert plan.values.max() <= 0.85 + 1e-12 and abs(plan.global_sparsity - 0.8) < 1e-9
    from prunekit.errors import PrunekitError
    for bad in ({"score": "x"}, {"reading": "x"}, {"denominator": "x"}, {"delta": 0}, {"k": 0},
                {"s0": 0.9}, {"s_cap": 0.5}, {"refresh": -1}):
        with pytest.raises(PrunekitError):
            allocate("mrp", het, 0.7, **bad)


def test_redundancy_spread_smaller_than_uniform(het):
    for metric in ("wanda", "magnitude", "sparsegpt"):
        plan = allocate("mrp", het, 0.7, score=metric, reading="frozen", m=5.0)
        r_mrp = mrp.redundancy_levels(het, plan.per_block, metric)
        r_uni = mrp.redundancy_levels(het, np.full(L, 0.7), metric)
        assert r_mrp.std() < 0.5 * r_uni.std(), (metric, r_mrp, r_uni)
        np.testing.assert_allclose(plan.extras["nor_final"], r_mrp, atol=1e-12)


def test_metric_changes_plan(het):
    a = allocate("mrp", het, 0.7, score="wanda", reading="frozen").per_block
    b = allocate("mrp", het, 0.7, score="magnitude", reading="frozen").per_block
    assert np.abs(a - b).max() > 0.02, (a, b)
    # Wanda sees block 2's input-norm outliers, magnitude does not: block 2 keeps more weights under Wanda
    assert a[2] < b[2] - 0.02


def test_deterministic(het):
    a = allocate("mrp", het, 0.6, k=2, reading="recomputed")
    b = allocate("mrp", het, 0.6, k=2, reading="recomputed")
    np.testing.assert_array_equal(a.values, b.values)


def brute_force_nor(stats, i, s, metric, m, reading, denominator, blocksize):
    """NOR of block i at sparsity s from the solvers' own mask functions on the dense scores."""
    A_all, alive_all = [], []
    for n in stats.linear_names:
        W = stats.weight(i, n).float()
        if metric == "wanda":
            norm = stats.wanda_norms()[i][n]
            A = W.abs() * norm.reshape(1, -1)
            pruned = wanda_mask(W, norm, s)
        elif metric == "magnitude":
            A = W.abs()
            pruned = magnitude_mask(W, s)
        else:
            A = W.pow(2) / stats.hinv_diag()[i][n].reshape(1, -1).pow(2)
            pruned = torch.zeros_like(A, dtype=torch.bool)
            for c in range(0, A.shape[1], blocksize):
                pruned[:, c:c + blocksize] = _global_mask(A[:, c:c + blocksize], s)
        A_all.append(A.reshape(-1))
        alive_all.append(~pruned.reshape(-1))
    A, alive = torch.cat(A_all).double(), torch.cat(alive_all)
    tau = m * (A.mean() if reading == "frozen" else A[alive].mean())
    non = int((alive & (A <= tau)).sum())
    den = int(alive.sum()) if denominator == "surviving" else A.numel()
    return non / den


@pytest.mark.parametrize("metric,reading,denominator,m", [
    ("wanda", "frozen", "surviving", 1.0), ("wanda", "recomputed", "dense", 3.0), ("magnitude", "frozen", "dense", 1.0),
    ("magnitude", "recomputed", "surviving", 1.0), ("sparsegpt", "frozen", "surviving", 1.0),
    ("sparsegpt", "recomputed", "surviving", 3.0), ("wanda", "frozen", "dense", 5.0),
    ("wanda", "recomputed", "surviving", 0.5)])
def test_incremental_nor_matches_brute_force(het, metric, reading, denominator, m):
    # m=1 makes ~40% of the weights outliers, so groups run out of non-outliers (k > c) before the
    # target; column blocks of 32 give SparseGPT several groups per matrix
    bsz = 32
    tables = mrp.build_tables(het, metric, m, reading, bsz)
    seen, memo = [], {}

    def brute(i, s):  # memoised on (block, sparsity): unchanged blocks are still compared every step
        if (i, s) not in memo:
            memo[i, s] = brute_force_nor(het, i, s, metric, m, reading, denominator, bsz)
        return memo[i, s]

    def check(step, s, nor, tabs):
        want = [brute(i, float(s[i])) for i in range(L)]
        np.testing.assert_allclose(nor, want, rtol=0, atol=1e-12, err_msg=f"step {step}, s={s}")
        seen.append(step)

    out = mrp.greedy(tables, het.sizes.sum(1), 0.75, delta=0.04, k=1, denominator=denominator, on_step=check)
    assert len(seen) == out["steps"] >= 70
    assert abs((out["s"] * het.sizes.sum(1)).sum() / het.sizes.sum() - 0.75) < 1e-12


def test_refresh_runs_and_restores(het):
    before = _copy_weights(het)
    plan = allocate("mrp", het, 0.6, delta=0.05, refresh=3, reading="frozen")
    assert plan.extras["refreshes"] >= 3
    assert abs(plan.global_sparsity - 0.6) < 1e-9
    after = _copy_weights(het)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_refresh_is_identity_for_magnitude(het):
    """Magnitude scores do not depend on data and pruning only zeroes the lowest ones, so refreshed
    tables must give the original NOR at every sparsity above the refresh state, and the plan
    must not change."""
    from prunekit.core.snapshot import weight_snapshot
    s = np.array([0.3, 0.1, 0.45, 0.2])
    with weight_snapshot(het.rt) as snap:  # dense again on exit
        fresh = mrp.refresh_tables(het, snap, s, "magnitude", 5.0, "frozen")
    orig = mrp.build_tables(het, "magnitude", 5.0, "frozen")
    for i in range(L):
        for x in (s[i], s[i] + 0.07, 0.9):
            assert fresh[i].nor(x) == pytest.approx(orig[i].nor(x), abs=1e-12)
    a = allocate("mrp", het, 0.6, score="magnitude", delta=0.05, reading="frozen")
    b = allocate("mrp", het, 0.6, score="magnitude", delta=0.05, refresh=4, reading="frozen")
    np.testing.assert_allclose(a.values, b.values, atol=1e-12)


def test_measured_redundancy_matches_simulation_for_one_shot_masks(het):
    """On a model pruned with dense-statistics masks (no sequential drift), the measured redundancy
    equals the table's simulated NOR."""
    masks = analysis.nonoutlier_masks(het, "magnitude", 5.0)
    snap = _copy_weights(het)
    s = np.array([0.2, 0.5, 0.7, 0.4])
    prune_model(het.model, None, s, "magnitude", progress=False)
    got = analysis.measured_redundancy(het.model, masks)
    _put_back(het, snap)
    np.testing.assert_allclose(got, mrp.redundancy_levels(het, s, "magnitude", 5.0), atol=1e-12)


def test_incremental_nor_matches_brute_force_k_blocks_per_step(het):
    """k=3 blocks per step, start sparsity s0=0.2, cap 0.8: every step still matches brute force,
    exactly k blocks move per full step and none passes the cap."""
    tables = mrp.build_tables(het, "wanda", 1.0, "frozen", 128)
    prev = [np.full(L, 0.2)]

    def check(step, s, nor, tabs):
        want = [brute_force_nor(het, i, float(s[i]), "wanda", 1.0, "frozen", "surviving", 128) for i in range(L)]
        np.testing.assert_allclose(nor, want, rtol=0, atol=1e-12)
        moved = int((s != prev[-1]).sum())
        assert moved <= 3 and s.max() <= 0.8 + 1e-12
        prev.append(s)

    out = mrp.greedy(tables, het.sizes.sum(1), 0.7, delta=0.05, k=3, s0=0.2, s_cap=0.8, on_step=check)
    assert abs((out["s"] * het.sizes.sum(1)).sum() / het.sizes.sum() - 0.7) < 1e-12
    assert sum(int((b != a).sum()) == 3 for a, b in zip(prev, prev[1:])) >= out["steps"] // 2


# ----------------------------------------------------------------------------- reading "current"

@torch.no_grad()
def owl_ratio_of_pruned_model(stats, i, s, metric, m, blocksize=128):
    """Brute force for reading "current": prune the real weights of block i at s with the solver's
    own mask function (dense statistics), then apply OWL's outlier test to the CURRENT block exactly
    as OWL does (all entries pooled, pruned ones scoring 0, A > m·mean is an outlier)."""
    snap = _copy_weights(stats)
    try:
        for n, lin in stats.layout.linears(i).items():
            W = lin.weight
            if metric == "wanda":
                W[wanda_mask(W, stats.wanda_norms()[i][n], s)] = 0
            elif metric == "magnitude":
                W[magnitude_mask(W, s)] = 0
            else:
                A = W.float().pow(2) / stats.hinv_diag()[i][n].reshape(1, -1).pow(2)
                for c in range(0, A.shape[1], blocksize):
                    W[:, c:c + blocksize][_global_mask(A[:, c:c + blocksize], s)] = 0
        A = torch.cat([a.reshape(-1) for a in stats.scores(i, metric, current=True).values()]).double()
        return 1.0 - float((A > m * A.mean()).sum()) / A.numel()
    finally:
        _put_back(stats, snap)


@pytest.mark.parametrize("metric,m", [("wanda", 5.0), ("wanda", 1.0), ("magnitude", 3.0), ("sparsegpt", 3.0)])
def test_current_reading_matches_pruned_model_every_step(het, metric, m):
    """The incremental ratio equals OWL's test on the actually pruned block after every step."""
    bsz = 32
    tables = mrp.build_tables(het, metric, m, "current", bsz)
    memo, seen = {}, []

    def check(step, s, nor, tabs):
        for i in range(L):
            key = (i, round(float(s[i]), 12))
            if key not in memo:
                memo[key] = owl_ratio_of_pruned_model(het, i, float(s[i]), metric, m, bsz)
            assert nor[i] == pytest.approx(memo[key], abs=1e-9), (step, i, s)
        seen.append(step)

    out = mrp.greedy(tables, het.sizes.sum(1), 0.7, delta=0.04, s0=0.3, on_step=check)
    assert len(seen) == out["steps"] >= 35
    for i in range(L):  # the initial state (uniform s0) too
        assert out["nor_initial"][i] == pytest.approx(owl_ratio_of_pruned_model(het, i, 0.3, metric, m, bsz), abs=1e-9)


@pytest.mark.parametrize("metric,m", [("wanda", 5.0), ("wanda", 3.0), ("magnitude", 5.0)])
def test_current_reading_at_zero_sparsity_is_owl_outlier_ratio(het, metric, m):
    nor0 = mrp.redundancy_levels(het, np.zeros(L), metric, m, reading="current")
    np.testing.assert_allclose(nor0, 1.0 - het.outlier_ratios(m, metric) / 100.0, atol=1e-12)


def test_current_reading_raw_plan_meets_budget_within_delta(het):
    """The registered function itself (before allocate's fit_budget) meets the budget within delta."""
    for target, delta in ((0.5, 0.01), (0.7, 0.03), (0.8, 0.05)):
        raw = mrp.mrp(het, target, delta=delta)  # default reading "current", s0 = S - 0.1
        assert raw.options["reading"] == "current" and raw.options["s0"] == pytest.approx(target - 0.1)
        assert abs(raw.global_sparsity - target) <= delta
        assert (raw.per_block >= target - 0.1 - 1e-12).all()
        # monotone: pruning a block never raises its ratio, so every final ratio <= its start
        assert (raw.extras["nor_final"] <= raw.extras["nor_initial"] + 1e-12).all()


def test_current_reading_refresh_runs_and_restores(het):
    before = _copy_weights(het)
    plan = allocate("mrp", het, 0.7, delta=0.05, refresh=2)
    assert plan.extras["refreshes"] >= 2 and abs(plan.global_sparsity - 0.7) < 1e-9
    after = _copy_weights(het)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_current_redundancy_of_pruned_model_matches_table(het):
    """Finding 3's measure "current" on a model pruned with dense-statistics masks equals the
    MRP table's reading "current" at the same per-block sparsities."""
    snap = _copy_weights(het)
    s = np.array([0.2, 0.5, 0.7, 0.4])
    try:
        for i in range(L):
            for n, lin in het.layout.linears(i).items():
                with torch.no_grad():
                    lin.weight[wanda_mask(lin.weight, het.wanda_norms()[i][n], float(s[i]))] = 0
        got = analysis.current_redundancy(het, "wanda", 5.0)
    finally:
        _put_back(het, snap)
    np.testing.assert_allclose(got, mrp.redundancy_levels(het, s, "wanda", 5.0, reading="current"), atol=1e-9)


def test_selection_ranks_on_common_cells_only():
    import pandas as pd

    from prunekit.experiments import mrp_selection as sel
    rows = [{"model": "a", "sparsity": 0.7, "config": c, "heldout_nll": v}
            for c, v in (("mrp[current,M=3]", 3.0), ("mrp[current,M=5]", 2.0), ("uniform", 2.5))]
    rows += [{"model": "a", "sparsity": 0.6, "config": "mrp[current,M=3]", "heldout_nll": 0.1}]  # M=5 lacks this cell
    out = sel.choose(pd.DataFrame(rows)).set_index("config")
    assert out.loc["mrp[current,M=5]", "mrp_rank"] == 1 and out.loc["mrp[current,M=5]", "cells"] == 1
    vs = sel.beats_baselines(pd.DataFrame(rows), "mrp[current,M=5]")
    assert vs["diff"].iloc[-1] == pytest.approx(-0.5)


@pytest.mark.parametrize("reading", mrp.READINGS)
def test_readings_and_tables_share_one_vocabulary(het, reading):
    """The option ``reading`` and the tables take the same names: the method's starting ratios are
    the tables' ratios under the same name, and the brute force of that reading agrees."""
    import typing
    assert set(typing.get_args(typing.get_type_hints(mrp.mrp)["reading"])) == set(mrp.READINGS)
    plan = mrp.mrp(het, 0.5, reading=reading, delta=0.05, m=3.0, s0=0.3)  # s0 > 0: the readings differ
    s0 = plan.options["s0"]
    np.testing.assert_allclose(plan.extras["nor_initial"],
                               mrp.redundancy_levels(het, s0, "wanda", 3.0, reading=reading), atol=1e-12)
    if reading != "current":  # the brute force of the earlier readings
        want = [brute_force_nor(het, i, s0, "wanda", 3.0, reading, "surviving", 128) for i in range(L)]
        np.testing.assert_allclose(plan.extras["nor_initial"], want, atol=1e-9)
