"""SV-NUP (prunekit/allocation/svnup, docs/methods.md §2): Shapley estimators on synthetic games, the real layer game on a tiny
Llama against a brute-force deep-copied model, and the budget-exact monotone allocation."""
from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import needs_data, tiny_calib, tiny_model

from prunekit.allocation.registry import allocate
from prunekit.allocation.svnup import map_to_sparsity
from prunekit.allocation.svnup.game import LayerGame
from prunekit.allocation.svnup.shapley import exact, monte_carlo, sliding_window
from prunekit.core.architectures import layout
from prunekit.errors import PrunekitError
from prunekit.scoring.statistics import Statistics
from prunekit.solvers.masks import magnitude_mask, wanda_mask

pytestmark = pytest.mark.usefixtures("one_thread")  # shared fixture in conftest


# ----------------------------------------------------------------------------- synthetic games

def random_game(n, seed):
    """A random game as a full value table (non-additive, interactions of every order)."""
    rng = np.random.default_rng(seed)
    table = rng.normal(size=1 << n)
    return table, (lambda mask: float(table[mask]))


def brute_shapley(v, n):
    """Shapley by the permutation definition: average marginal over all n! orders (independent of
    the subset-weight formula used by the code)."""
    phi = np.zeros(n)
    perms = list(itertools.permutations(range(n)))
    for order in perms:
        mask = 0
        for p in order:
            phi[p] += v(mask | 1 << p) - v(mask)
            mask |= 1 << p
    return phi / len(perms)


def test_exact_matches_permutation_definition_and_efficiency():
    table, v = random_game(5, 0)
    r = exact(v, 5)
    assert np.allclose(r.values, brute_shapley(v, 5), atol=1e-12)
    assert abs(r.values.sum() - (table[31] - table[0])) < 1e-9
    assert r.evaluations == 32 and r.seconds >= 0


def test_exact_symmetry_and_null_player():
    n = 6
    table, _ = random_game(n, 1)

    def swap01(m):  # exchange the roles of players 0 and 1
        b0, b1 = m & 1, m >> 1 & 1
        return (m & ~3) | (b0 << 1) | b1

    def v(m):  # symmetric in players 0 and 1; player 4 is null (value ignores bit 4)
        m = m & ~(1 << 4)
        return table[m] + table[swap01(m)]

    phi = exact(v, n).values
    assert abs(phi[0] - phi[1]) < 1e-9
    assert abs(phi[4]) < 1e-9
    assert abs(phi.sum() - (v((1 << n) - 1) - v(0))) < 1e-9
    assert abs(phi[2] - phi[3]) > 1e-6  # generic players differ (the checks are not vacuous)


def test_additive_game_returns_weights_for_every_estimator():
    w = np.array([0.3, -1.2, 2.5, 0.0, 4.1, -0.7, 1.1])
    v = lambda C: 5.0 + sum(w[i] for i in C)  # frozenset interface
    assert np.allclose(exact(v, 7, keys="set").values, w, atol=1e-9)
    assert np.allclose(monte_carlo(v, 7, 3, seed=0, keys="set").values, w, atol=1e-9)
    assert np.allclose(sliding_window(v, 7, 3, keys="set").values, w, atol=1e-9)
    assert np.allclose(sliding_window(v, 7, 3, disjoint=True, keys="set").values, w, atol=1e-9)


def test_exact_refuses_large_games():
    with pytest.raises(PrunekitError, match="sliding_window"):
        exact(lambda m: 0.0, 17)


def test_monte_carlo_converges_to_exact():
    n = 6
    table, v = random_game(n, 2)
    ref = exact(v, n).values
    r = monte_carlo(v, n, 2000, seed=0)
    assert np.all(np.abs(r.values - ref) <= 3 * r.stderr)
    assert r.evaluations <= 1 << n
    # error shrinks ~ 1/sqrt(n_permutations): RMSE over seeds at 50 vs 800 permutations (ratio ≈ 4)
    rmse = {}
    for m in (50, 800):
        errs = [monte_carlo(v, n, m, seed=s).values - ref for s in range(8)]
        rmse[m] = float(np.sqrt(np.mean(np.square(errs))))
    assert 2.0 < rmse[50] / rmse[800] < 8.0
    # the trace is the running estimate
    assert np.allclose(r.trace[-1]["values"], r.values) and r.trace[0]["permutations"] == 1


def test_sliding_window_full_width_equals_exact():
    n = 7
    _, v = random_game(n, 3)
    ref = exact(v, n).values
    assert np.allclose(sliding_window(v, n, window=n).values, ref, atol=1e-12)
    assert np.allclose(sliding_window(v, n, window=n, disjoint=True).values, ref, atol=1e-12)
    r = sliding_window(v, n, window=3)
    assert not np.allclose(r.values, ref, atol=1e-3)  # a narrow window is an approximation
    # distinct coalitions: union of the power sets of the windows [0,3), [1,4), ..., [4,7)
    union = {sum(1 << (a + j) for j in range(3) if s >> j & 1) for a in range(5) for s in range(8)}
    assert r.evaluations == len(union)


def test_sliding_window_uses_background_outside_window():
    # v depends only on player 0; with background 'all absent' and a window not containing 0,
    # every other player's marginal is zero
    v = lambda m: 3.0 * (m & 1) + 0.5 * (m & 1) * (m >> 5 & 1)
    r = sliding_window(v, 6, window=3)
    brute = np.zeros(6)
    brute[0] = 3.0  # window of 0 is [0,3): player 5 absent
    brute[5] = 0.0  # window of 5 is [3,6): player 0 absent (background) -> no interaction
    assert np.allclose(r.values, brute)


# ----------------------------------------------------------------------------- the real layer game

def brute_nll(model, calib_ids, heldout_ids, dense_blocks, target, metric):
    """From scratch: deep copy, Wanda norms from one hooked full dense forward, prune the blocks
    outside ``dense_blocks``, full forward over the held-out set."""
    m = copy.deepcopy(model)
    lay = layout(m)
    sq = {}
    hooks = []
    for i in range(lay.num_blocks):
        for name, lin in lay.linears(i).items():
            def hook(mod, inp, out, key=(i, name)):
                x = inp[0].detach().reshape(-1, mod.in_features).double()
                sq[key] = sq.get(key, 0) + (x ** 2).sum(0)
            hooks.append(lin.register_forward_hook(hook))
    with torch.no_grad():
        m(input_ids=calib_ids, use_cache=False)
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for i in range(lay.num_blocks):
            if i in dense_blocks:
                continue
            for name, lin in lay.linears(i).items():
                W = lin.weight
                if metric == "wanda":
                    norm = (sq[(i, name)] / calib_ids.shape[0]).sqrt().float()
                    W[wanda_mask(W, norm, target)] = 0
                else:
                    W[magnitude_mask(W, target)] = 0
        logits = m(input_ids=heldout_ids, use_cache=False).logits
    return float(F.cross_entropy(logits[:, :-1].flatten(0, 1), heldout_ids[:, 1:].flatten()))


@pytest.mark.parametrize("metric,store", [("wanda", "weights"), ("magnitude", "masks"), ("wanda", "masks")])
def test_layer_game_swap_equals_brute_force_and_restores(metric, store):
    model = tiny_model("llama", layers=4, seed=1)
    calib, held = tiny_calib(n=4, seqlen=24, seed=0), tiny_calib(n=3, seqlen=20, seed=1)
    dense_state = copy.deepcopy(model.state_dict())
    with LayerGame(model, calib.input_ids, held, 0.6, metric, batch_size=2, store=store, progress=False) as g:
        for dense_blocks in ({0, 2}, {1}, set(), {0, 1, 2, 3}, {3}):
            mask = sum(1 << i for i in dense_blocks)
            ref_model = _dense_copy(model, dense_state)  # `model` currently holds swapped weights
            want = brute_nll(ref_model, calib.input_ids, held.input_ids, dense_blocks, 0.6, metric)
            assert abs(-g(mask) - want) < 1e-5 * max(1.0, abs(want))
        assert g.blocks_run < 5 * 4  # prefix states were reused
        # real change: pruning all blocks costs NLL
        assert g(0) < g(15)
    for k, v in model.state_dict().items():
        assert torch.equal(v, dense_state[k]), k


def _dense_copy(model, state):
    m = copy.deepcopy(model)
    m.load_state_dict(state)
    return m


def test_exact_layer_game_efficiency_and_pruned_coalition_dual():
    model = tiny_model("llama", layers=4, seed=2)
    calib, held = tiny_calib(n=4, seqlen=24, seed=0), tiny_calib(n=2, seqlen=24, seed=1)
    with LayerGame(model, calib.input_ids, held, 0.7, "wanda", batch_size=2, progress=False) as g:
        r = exact(g, g.n)
        assert r.evaluations == 16
        assert abs(r.values.sum() - (g(15) - g(0))) < 1e-9
        v_dense, v_pruned = -g(15), -g(0)
    with LayerGame(model, calib.input_ids, held, 0.7, "wanda", game="pruned_coalition", batch_size=2,
                   progress=False) as g2:
        r2 = exact(g2, g2.n)
        # v'(C) = NLL(C pruned) = -v(N \ C): the dual game has the same exact Shapley values
        assert abs(g2(0) - v_dense) < 1e-6 and abs(g2(15) - v_pruned) < 1e-6
    assert np.allclose(r.values, r2.values, atol=1e-6)


# ----------------------------------------------------------------------------- mapping + allocation

@pytest.mark.parametrize("mapping", ["linear", "rank", "softmax"])
def test_mapping_is_monotone(mapping):
    rng = np.random.default_rng(0)
    phi = rng.normal(size=12)
    s = map_to_sparsity(phi, 0.6, mapping=mapping, lam=0.1, temperature=0.7)
    order = np.argsort(phi)
    assert np.all(np.diff(s[order]) <= 1e-12)
    if mapping == "linear":
        assert abs(s.max() - 0.7) < 1e-12 and abs(s.min() - 0.5) < 1e-12
    if mapping == "softmax":
        assert abs(s.mean() - 0.6) < 1e-12


def test_svnup_allocation_is_budget_exact_and_monotone():
    model = tiny_model("llama", layers=4, seed=3)
    calib, held = tiny_calib(n=4, seqlen=24, seed=0), tiny_calib(n=2, seqlen=24, seed=1)
    stats = Statistics(model, calib, progress=False)
    before = copy.deepcopy(model.state_dict())
    plan = allocate("svnup", stats, 0.5, estimator="exact", heldout=held, lam=0.2)
    phi = np.asarray(plan.extras["shapley"])
    assert abs(plan.global_sparsity - 0.5) < 1e-6
    s = plan.per_block
    for a in range(4):
        for b in range(4):
            if phi[a] > phi[b]:
                assert s[a] <= s[b] + 1e-12
    assert np.ptp(s) > 0.05  # non-uniform
    assert plan.extras["shapley_evaluations"] == 16
    assert abs(phi.sum() - (plan.extras["v_full"] - plan.extras["v_empty"])) < 1e-9
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    # cached: a second call with the same options reads the stored Shapley values
    stats2 = Statistics(model, calib, progress=False)
    plan2 = allocate("svnup", stats2, 0.5, estimator="exact", heldout=held, lam=0.2)
    assert np.array_equal(plan2.extras["shapley"], phi)
    assert stats2.dense_passes == 0
    sw = allocate("svnup", stats, 0.5, window=4, heldout=held, lam=0.2)  # w = L -> exact
    assert np.allclose(sw.extras["shapley"], phi, atol=1e-9)


def test_svnup_rejects_bad_options():
    model = tiny_model("llama", layers=4, seed=3)
    stats = Statistics(model, tiny_calib(n=2, seqlen=16), progress=False)
    held = tiny_calib(n=2, seqlen=16, seed=1)
    for bad in (dict(estimator="nope"), dict(mapping="nope"), dict(base_metric="nope"), dict(game="nope")):
        with pytest.raises(PrunekitError):
            allocate("svnup", stats, 0.5, heldout=held, **bad)


@pytest.mark.parametrize("kind", ["qwen2", "gemma3", "opt"])
def test_layer_game_other_families(kind):
    # the generic head (blocks replaced by a replay) must match a plain forward on every family
    model = tiny_model(kind, layers=3, seed=4)
    calib, held = tiny_calib(n=2, seqlen=16, seed=0), tiny_calib(n=2, seqlen=16, seed=1)
    dense_state = copy.deepcopy(model.state_dict())
    with LayerGame(model, calib.input_ids, held, 0.5, "magnitude", progress=False) as g:
        assert abs(-g(g.full) - g.plain_forward_nll()) < 1e-5
        want = brute_nll(_dense_copy(model, dense_state), calib.input_ids, held.input_ids, {1}, 0.5, "magnitude")
        assert abs(-g(0b010) - want) < 1e-5 * max(1.0, want)


@needs_data
def test_heldout_is_disjoint_from_pruning_samples(byte_tokenizer):
    from prunekit.allocation.svnup.game import heldout_data
    from prunekit.core.data import calibration_data
    calib = calibration_data("c4", byte_tokenizer, 6, 64, seed=0)
    stats = Statistics(tiny_model("llama", layers=2), calib, progress=False)
    stats.tokenizer = byte_tokenizer
    held = heldout_data(stats, 5)
    assert held.seed == 1 and held.input_ids.shape == (5, 64)
    assert not set(held.picks) & set(calib.picks)


def test_approximation_study_and_claim_sentence():
    from prunekit.experiments.svnup import approximation_study, paper_claim
    w = np.linspace(-1, 2, 8)
    study = approximation_study(lambda m: float(sum(w[i] for i in range(8) if m >> i & 1)), 8,
                                reference_permutations=3, mc_permutations=4, windows=(3,), disjoint=(False, True),
                                progress=False)
    assert set(study["estimator"]) == {"sliding_window", "sliding_window_disjoint", "monte_carlo"}
    assert np.allclose(study["rel_error"], 0) and np.allclose(study["spearman"], 1)  # additive game
    table = [{"metric": "sparsegpt", "allocation": "uniform", "sparsity": 0.7, "wikitext2": 20.0},
             {"metric": "sparsegpt", "allocation": "svnup", "sparsity": 0.7, "wikitext2": 16.0}]
    assert "-20.0 %" in paper_claim(table) and "reproduces" in paper_claim(table)
    table[1]["wikitext2"] = 21.0
    assert "does NOT reproduce" in paper_claim(table)
    wanda = [dict(r, metric="wanda") for r in table]
    assert "neither confirmed nor refuted" in paper_claim(wanda, metric="wanda")


def test_sliding_window_backgrounds():
    n = 7
    table, v = random_game(n, 5)
    full = (1 << n) - 1
    dual = lambda m: table[full] - table[full & ~m]  # v*(C) = v(N) - v(N \ C): same exact Shapley
    assert np.allclose(exact(dual, n).values, exact(v, n).values, atol=1e-12)
    present = sliding_window(v, n, 3, background="present").values
    assert np.allclose(present, sliding_window(dual, n, 3, background="absent").values, atol=1e-12)
    assert np.allclose(present, sliding_window(v, n, 3, background=full).values, atol=1e-12)
    absent = sliding_window(v, n, 3).values
    both = sliding_window(v, n, 3, background="both")
    assert np.allclose(both.values, (absent + present) / 2, atol=1e-12)
    assert not np.allclose(absent, present, atol=1e-3)
    assert np.allclose(sliding_window(v, n, n, background="both").values, exact(v, n).values, atol=1e-12)
    with pytest.raises(PrunekitError):
        sliding_window(v, n, 3, background="nope")
