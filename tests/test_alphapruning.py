"""AlphaPruning (prunekit/allocation/alphapruning.py, docs/methods.md §5): the ESD estimator against a
step-by-step transcription of the reference, the mapping against the official golden vectors, the
direction property on toys (§8.3), the weights-only cache."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import tiny_model

from prunekit.allocation.alphapruning import alpha_mapping, esd_alpha, hill_alpha_from_eigs
from prunekit.allocation.registry import allocate
from prunekit.scoring.statistics import Statistics, StatsCache

# ---------------------------------------------------------------- golden vectors (§5, official data)
GOLD_L2_7B_EPS03 = np.array([float(x) for x in """
0.4619 0.5647 0.6397 0.6398 0.6431 0.6415 0.6198 0.6305 0.5830 0.6013 0.5660 0.5592 0.5894 0.6198
0.6268 0.6394 0.6965 0.7414 0.7933 0.7624 0.8578 0.8470 0.8331 0.8193 0.8327 0.8144 0.7434 0.8415
0.8261 0.8130 0.8476 0.7046""".split()])


GOLD_L1_7B_EPS02 = np.array([float(x) for x in """
0.5704 0.6176 0.6315 0.6307 0.6529 0.6482 0.6301 0.5922 0.5974 0.5680 0.5871 0.5894 0.5990 0.6109
0.6188 0.6681 0.6587 0.7156 0.7906 0.7438 0.7946 0.8248 0.7701 0.7629 0.8122 0.8521 0.8313 0.8415
0.7869 0.8297 0.8414 0.7317""".split()])


GOLDEN = [(GOLD_L2_7B_EPS03, 0.3), (GOLD_L1_7B_EPS02, 0.2)]


# LLaMA-7B linear sizes in find_layers order q,k,v,o,gate,up,down
LLAMA7B_SIZES = np.tile(np.array([4096 * 4096] * 4 + [11008 * 4096] * 3, dtype=float), (32, 1))


@pytest.mark.parametrize("gold,eps", GOLDEN)
def test_golden_vectors_are_multiplicative_eps_range_with_mean_S(gold, eps):
    # With equal-size blocks, r ∈ [1−ε, 1+ε] spans its full range and the exact rescale is a common
    # factor, so min/max = (1−ε)/(1+ε) and mean = S. Independent of our implementation.
    assert gold.size == 32
    assert abs(gold.mean() - 0.7) < 1e-4
    assert abs(gold.min() / gold.max() - (1 - eps) / (1 + eps)) < 1e-4


@pytest.mark.parametrize("gold,eps", GOLDEN)
def test_alpha_mapping_reproduces_golden_vectors(gold, eps):
    rng = np.random.default_rng(0)
    # unknown block alphas: any increasing affine image of the golden vector; spread each block's
    # mean over its 7 matrices with a zero-mean perturbation (tests the block-wise averaging too)
    d = rng.normal(size=(32, 7))
    d -= d.mean(axis=1, keepdims=True)
    alphas = (1.5 + 4.0 * gold)[:, None] + 0.3 * d
    s = alpha_mapping(alphas, LLAMA7B_SIZES, 0.7, eps, "block_wise")
    per_block = (s * LLAMA7B_SIZES).sum(1) / LLAMA7B_SIZES.sum(1)
    np.testing.assert_allclose(per_block, gold, atol=1e-4)
    np.testing.assert_allclose(s, s[:, :1].repeat(7, 1), atol=1e-12)  # one value per block
    assert abs((s * LLAMA7B_SIZES).sum() / LLAMA7B_SIZES.sum() - 0.7) < 1e-12
    # per-matrix mapping uses the perturbations: differs within blocks, still budget-exact
    pm = alpha_mapping(alphas, LLAMA7B_SIZES, 0.7, eps, "per_matrix")
    assert np.ptp(pm, axis=1).max() > 1e-3
    assert abs((pm * LLAMA7B_SIZES).sum() / LLAMA7B_SIZES.sum() - 0.7) < 1e-12


def test_alpha_mapping_exact_rescale_with_unequal_sizes():
    rng = np.random.default_rng(1)
    alphas = rng.uniform(1.5, 6.0, size=(5, 3))
    sizes = rng.integers(10, 1000, size=(5, 3)).astype(float)
    s = alpha_mapping(alphas, sizes, 0.6, 0.25, "per_matrix")
    # brute force: r on the min-max scale, then the weighted budget
    a = alphas
    r = 0.75 + 0.5 * (a - a.min()) / (a.max() - a.min())
    expect = r * 0.6 * sizes.sum() / (sizes * r).sum()
    np.testing.assert_allclose(s, expect, rtol=1e-12)
    np.testing.assert_allclose(alpha_mapping(np.full((4, 2), 3.0), np.ones((4, 2)), 0.5), 0.5)


# ---------------------------------------------------------------- ESD estimator
def _pareto(alpha, n, seed, xmin=0.5):
    # density p(λ) ∝ λ^-α on [xmin, ∞): inverse CDF λ = xmin·U^(-1/(α-1))
    u = np.random.default_rng(seed).random(n)
    return xmin * u ** (-1.0 / (alpha - 1.0))


@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.0])
@pytest.mark.parametrize("estimator", ["xmin_peak", "xmin_mid"])
def test_hill_recovers_pareto_alpha(alpha, estimator):
    for seed in (0, 1, 2):
        est = hill_alpha_from_eigs(_pareto(alpha, 4000, seed), estimator)
        assert abs(est - alpha) / alpha < 0.05, (seed, est)


def _reference_alpha(eigs, fix_lower_bound=False, bins=100):
    """Step-by-step transcription of docs/methods.md §5 with plain loops (independent check)."""
    lam = np.sort(np.asarray(eigs, dtype=np.float64))
    N = lam.size
    l10 = np.log10(lam.astype(np.float32)).astype(np.float64)
    counts, edges = np.histogram(l10, bins=bins, range=(l10.min(), l10.max()))
    xmin2 = 10 ** edges[int(np.argmax(counts))]
    xmin_min = 0.95 * xmin2 if fix_lower_bound else math.log10(0.95 * xmin2)
    alphas, Ds = [0.0] * (N - 1), [1.0] * (N - 1)
    for i in range(N - 1):
        if lam[i] > 1.5 * xmin2:
            break
        if lam[i] < xmin_min:
            continue
        n = N - i
        a = 1 + n / (np.log(lam[i:]).sum() - n * math.log(lam[i]))
        alphas[i] = a
        if a > 1:
            k = np.arange(n)
            Ds[i] = np.abs(1 - (lam[i:] / lam[i]) ** (1 - a) - k / n).max()
    return alphas[int(np.argmin(Ds))]


@pytest.mark.parametrize("seed,shape,kind,scale", [
    (0, (64, 64), "gauss", 0.02), (1, (128, 48), "gauss", 1.0), (2, (96, 40), "t", 0.05),
    (3, (80, 80), "gauss", 30.0), (4, (120, 60), "t", 10.0)])
@pytest.mark.parametrize("fix", [False, True])
def test_esd_alpha_matches_stepwise_reference(seed, shape, kind, scale, fix):
    g = torch.Generator().manual_seed(seed)
    if kind == "gauss":
        W = torch.randn(*shape, generator=g) * scale
    else:  # heavy-tailed entries
        W = torch.distributions.StudentT(2.0).sample(shape) * scale
    eigs = torch.linalg.svdvals(W.float()).pow(2).numpy()
    got = esd_alpha(W, fix_lower_bound=fix)
    assert got == pytest.approx(_reference_alpha(eigs, fix), rel=1e-5)
    mid = esd_alpha(W, estimator="xmin_mid")
    lam = np.sort(eigs.astype(np.float64))
    i = lam.size // 2
    assert mid == pytest.approx(1 + (lam.size - i) / np.log(lam[i:] / lam[i]).sum(), rel=1e-6)


def test_fix_lower_bound_changes_candidates_when_eigenvalues_are_large():
    # eigenvalues ~1e4: the reference's log10 bound (≈4) excludes nothing, the fix excludes the
    # part of the ESD left of 0.95·peak; the two estimates must then differ
    W = torch.randn(200, 100, generator=torch.Generator().manual_seed(2)) * 10.0
    eigs = torch.linalg.svdvals(W).pow(2).numpy()
    a_bug, a_fix = esd_alpha(W), esd_alpha(W, fix_lower_bound=True)
    assert a_bug == pytest.approx(_reference_alpha(eigs, False), rel=1e-5)
    assert a_fix == pytest.approx(_reference_alpha(eigs, True), rel=1e-5)
    assert a_bug != pytest.approx(a_fix, rel=1e-3)


def test_alphapruning_plan_records_options_and_extras(tiny_stats):
    stats = tiny_stats
    a = allocate("alphapruning", stats, 0.6, epsilon=0.2)
    assert a.options["epsilon"] == 0.2 and a.options["estimator"] == "xmin_peak"
    assert a.extras["alpha"].shape == stats.sizes.shape
    W = stats.weight(2, stats.linear_names[4])
    assert a.extras["alpha"][2, 4] == pytest.approx(esd_alpha(W), rel=1e-9)
    np.testing.assert_allclose(a.extras["alpha_block"], a.extras["alpha"].mean(1))


def test_alphapruning_needs_no_calibration_and_caches(tmp_path, monkeypatch):
    model = tiny_model(seed=1)
    s1 = Statistics(model, None, cache=StatsCache(tmp_path), progress=False)
    p1 = allocate("alphapruning", s1, 0.5)
    assert s1.dense_passes == 0
    assert list(tmp_path.glob("*.safetensors"))
    import prunekit.allocation.alphapruning as B
    monkeypatch.setattr(B, "esd_alpha", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    s2 = Statistics(model, None, cache=StatsCache(tmp_path), progress=False)
    p2 = allocate("alphapruning", s2, 0.5)
    np.testing.assert_array_equal(p1.values, p2.values)
    # a different estimator option is a different cache entry -> recomputation is attempted
    with pytest.raises(AssertionError, match="recomputed"):
        allocate("alphapruning", s2, 0.5, fix_lower_bound=True)
    assert allocate("atp", s2, 0.5).global_sparsity == pytest.approx(0.5)


# ---------------------------------------------------------------- direction conventions on toys (§8.3)
def test_alpha_direction_larger_alpha_more_sparsity():
    alphas = np.array([[2.0, 2.2], [3.0, 3.1], [5.0, 4.0], [2.5, 2.5]])
    s = alpha_mapping(alphas, np.ones_like(alphas), 0.5, 0.3)
    order = np.argsort(alphas.mean(1))
    assert np.all(np.diff(s[order, 0]) > 0)


@torch.no_grad()
def test_alphapruning_prunes_heavy_tailed_block_least():
    model = tiny_model(seed=2)
    st_ = Statistics(model, None, cache=False, progress=False)
    g = torch.Generator().manual_seed(3)
    for i in range(st_.num_blocks):  # light-tailed (Gaussian) everywhere ...
        for lin in st_.layout.linears(i).values():
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.02)
    torch.manual_seed(4)
    for lin in st_.layout.linears(1).values():  # ... except block 1: heavy-tailed entries
        lin.weight.copy_(torch.distributions.StudentT(1.0).sample(lin.weight.shape) * 0.02)
    st_ = Statistics(model, None, cache=False, progress=False)
    p = allocate("alphapruning", st_, 0.5)
    assert int(np.argmin(p.extras["alpha_block"])) == 1
    assert int(np.argmin(p.per_block)) == 1
