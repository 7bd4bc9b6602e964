"""Absorption (prunekit/allocation/absorption, docs/methods.md §3): drift measurement against independent computations (hand-built
contracting / expanding residual networks, two full forward passes of a pruned copy), seeding,
and the correction's budget / direction / γ = 0 properties."""
from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import tiny_calib, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from prunekit.allocation import absorption as ab
from prunekit.allocation.plan import fit_budget
from prunekit.allocation.registry import allocate
from prunekit.errors import PrunekitError
from prunekit.scoring.statistics import Statistics
from prunekit.solvers.prune import prune_model

# ---------------------------------------------------------------- hand-built residual network

class _ToyBlock(nn.Module):
    """h ↦ h + A h with A = diag(0 on the first half, gain on the second half)."""
    def __init__(self, d, gain):
        super().__init__()
        self.mix = nn.Linear(d, d, bias=False)
        with torch.no_grad():
            self.mix.weight.copy_(torch.diag(torch.cat([torch.zeros(d // 2), torch.full((d - d // 2,), gain)])))

    def forward(self, h, **kwargs):
        return h + self.mix(h)


class _ToyLM(nn.Module):
    """Clean states live in the first half of the coordinates (embedding's second half is 0), so the
    blocks leave them unchanged and scale only the perturbation's second-half component."""
    def __init__(self, gains, d=32, vocab=64):
        super().__init__()
        self.config = SimpleNamespace(model_type="llama")  # layout() only reads model_type
        self.model = nn.Module()
        self.model.embed = nn.Embedding(vocab, d)
        with torch.no_grad():
            self.model.embed.weight[:, d // 2:] = 0
        self.model.layers = nn.ModuleList(_ToyBlock(d, g) for g in gains)
        self.model.norm = nn.Identity()

    def forward(self, input_ids=None, use_cache=False):
        h = self.model.embed(input_ids)
        for b in self.model.layers:
            h = b(h, position_ids=None)
        return h


def _expected_ratio(gain, m, d=32, n=200_000, seed=123):
    """Monte Carlo E[‖(z1, (1+g)^m z2)‖/‖z‖] for z ~ N(0, I_d): independent of the code under test."""
    z = np.random.default_rng(seed).normal(size=(n, d))
    z1, z2 = z[:, : d // 2], z[:, d // 2:]
    num = np.sqrt((z1 ** 2).sum(1) + (1 + gain) ** (2 * m) * (z2 ** 2).sum(1))
    return float((num / np.linalg.norm(z, axis=1)).mean())


def _ids(n=8, T=32, vocab=64, seed=0):
    return torch.randint(0, vocab, (n, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("gain", [-0.5, 1.0])
def test_toy_network_contracting_absorbs_expanding_amplifies(gain):
    torch.manual_seed(0)
    L = 4
    model = _ToyLM([gain] * L)
    probe = ab.Probe(model, _ids(), batch_size=4, progress=False)
    trajs = probe.scan("noise", eta=1e-2, draws=2, seed=0)
    r = ab.coefficients(trajs)
    for l, t in enumerate(trajs):
        m = L - 1 - l
        # injected drift is exactly eta (clean states are unchanged by the blocks)
        np.testing.assert_allclose(t.drift[0], 1e-2, rtol=1e-5)
        # the per-token mean of the ratio matches the analytic expectation (Monte Carlo)
        assert r[l] == pytest.approx(_expected_ratio(gain, m), rel=0.05)
        d = t.drift
        if m:
            assert (np.diff(d) < 0).all() if gain < 0 else (np.diff(d) > 0).all()
            assert (np.diff(t.cos_state) > 0).all() if gain < 0 else (np.diff(t.cos_state) < 0).all()
    assert r[-1] == pytest.approx(1.0)  # nothing after the last block
    if gain < 0:
        assert (r[:-1] < 1).all()
    else:
        assert (r[:-1] > 1).all()
    assert (np.diff(r) > 0).all() if gain < 0 else (np.diff(r) < 0).all()


def test_eta_zero_gives_zero_drift_and_nan_coefficient():
    model = tiny_model("llama")
    probe = ab.Probe(model, tiny_calib(n=2, seqlen=16).input_ids, progress=False)
    for l in (0, 2):
        t = probe.noise(l, eta=0.0, draws=2)
        assert np.all(t.drift == 0) and t.drift_norm == 0
        np.testing.assert_allclose(t.cos_state, 1.0, atol=1e-6)
        assert t.nvalid == 0 and math.isnan(t.coefficient())
    with pytest.raises(PrunekitError):
        ab.correction_signal([1.0, float("nan"), 0.5, 2.0])


def test_noise_identities_and_options():
    model = tiny_model("llama", layers=4)
    ids = tiny_calib(n=3, seqlen=16).input_ids
    probe = ab.Probe(model, ids, batch_size=2, progress=False)
    t = probe.noise(1, eta=1e-2, draws=1, seed=0)
    # the injected drift is eta by construction; with a constant R_l the two reductions coincide
    np.testing.assert_allclose(t.drift[0], 1e-2, rtol=1e-4)
    assert t.coefficient("mean_of_ratios") == pytest.approx(t.coefficient("ratio_of_means"), rel=1e-3)
    assert t.coefficient(depth="mean") == pytest.approx(t.ratio[1:].mean())
    assert t.coefficient(final_norm=True) == pytest.approx(t.ratio_norm)
    assert t.ntokens == 3 * 15  # position 0 excluded
    t_all = ab.Probe(model, ids, batch_size=2, skip_first=False, progress=False).noise(1, seed=0)
    assert t_all.ntokens == 3 * 16
    # checkpointing trades memory for recomputation without changing the numbers
    p2 = ab.Probe(model, ids, batch_size=2, checkpoint_every=3, progress=False)
    runs0 = p2.block_runs
    t2 = p2.noise(1, eta=1e-2, seed=0)
    np.testing.assert_allclose(t2.drift, t.drift, rtol=1e-6)
    runs_ckpt = p2.block_runs - runs0
    runs0 = probe.block_runs
    probe.noise(1, eta=1e-2, seed=0)
    assert runs_ckpt > probe.block_runs - runs0
    with pytest.raises(PrunekitError):
        probe.noise(4)
    with pytest.raises(PrunekitError):
        t.coefficient(reduction="median")


def test_seeded_noise_is_reproducible():
    model = tiny_model("llama")
    ids = tiny_calib(n=2, seqlen=16).input_ids
    p = ab.Probe(model, ids, progress=False)
    a, b = p.noise(0, eta=0.05, seed=3), p.noise(0, eta=0.05, seed=3)
    c = p.noise(0, eta=0.05, seed=4)
    fresh = ab.Probe(model, ids, progress=False).noise(0, eta=0.05, seed=3)
    for x in (b, fresh):
        np.testing.assert_array_equal(a.drift, x.drift)
        np.testing.assert_array_equal(a.cos_drift, x.cos_drift)
    assert not np.allclose(a.drift[1:], c.drift[1:], rtol=1e-7, atol=0)
    assert not np.allclose(a.cos_drift, c.cos_drift, rtol=1e-7, atol=0)


# ---------------------------------------------------------------- pruning perturbation vs two forwards

def _token_stats(hp, hc, skip_first=True):
    d = hp - hc
    R = d.norm(dim=-1) / hc.norm(dim=-1)
    cs = torch.nn.functional.cosine_similarity(hp, hc, dim=-1)
    sl = slice(1, None) if skip_first else slice(None)
    return R[:, sl], cs[:, sl]


@pytest.mark.parametrize("metric", ["magnitude", "wanda", "sparsegpt"])
def test_pruning_drift_equals_two_full_forward_passes(metric):
    model = tiny_model("llama", layers=4)
    ids = tiny_calib(n=3, seqlen=16).input_ids
    l, s = 1, 0.6
    dense_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    t = ab.Probe(model, ids, batch_size=8, progress=False).pruned(l, s, metric)
    for n, p in model.named_parameters():  # weights restored
        assert torch.equal(p, dense_before[n])
    pruned = copy.deepcopy(model)
    plan = np.zeros(4)
    plan[l] = s
    prune_model(pruned, ids, plan, metric, progress=False)
    outs = {}
    pruned.model.layers[-1].register_forward_hook(lambda m, i, o: outs.__setitem__("p", o))
    model_hook = model.model.layers[-1].register_forward_hook(lambda m, i, o: outs.__setitem__("c", o))
    with torch.no_grad():
        hc = model(input_ids=ids, output_hidden_states=True).hidden_states
        hp = pruned(input_ids=ids, output_hidden_states=True).hidden_states
    model_hook.remove()
    # hidden_states[k+1] is block k's output for k < L-1; hidden_states[L] is after the final norm
    R_l, _ = _token_stats(hp[l + 1], hc[l + 1])
    for k in range(l, 3):
        R, cs = _token_stats(hp[k + 1], hc[k + 1])
        assert t.drift[k - l] == pytest.approx(float(R.mean()), rel=1e-4)
        assert t.ratio[k - l] == pytest.approx(float((R / R_l).mean()), rel=1e-4)
        assert t.cos_state[k - l] == pytest.approx(float(cs.mean()), rel=1e-5)
    R, _ = _token_stats(outs["p"], outs["c"])
    assert t.drift[-1] == pytest.approx(float(R.mean()), rel=1e-4)
    R, cs = _token_stats(hp[4], hc[4])
    assert t.drift_norm == pytest.approx(float(R.mean()), rel=1e-4)
    assert t.ratio_norm == pytest.approx(float((R / R_l).mean()), rel=1e-4)
    assert t.coefficient(final_norm=True) == pytest.approx(float((R / R_l).mean()), rel=1e-4)


# ---------------------------------------------------------------- correction

def _fake_stats(L=6, K=7):
    return SimpleNamespace(sizes=np.full((L, K), 100.0), linear_names=[f"m{k}" for k in range(K)],
                           num_blocks=L)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.05, 20.0), min_size=3, max_size=12), st.floats(0.0, 0.5),
       st.sampled_from(["mean", "none"]), st.integers(0, 2**31 - 1))
def test_correction_direction_before_budget(r, gamma, center, seed):
    r = np.asarray(r)
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.3, 0.8, size=(r.size, 3))
    out = ab.absorption_correction(base, r, gamma, center=center)
    u = np.clip(np.log(r), -ab.CLIP, ab.CLIP)
    change = out - base
    assert np.allclose(change, change[:, :1])          # one Δ per block, on every matrix
    ref = -(u - u.mean()) if center == "mean" else -u  # spec formula, written out
    np.testing.assert_allclose(change[:, 0], gamma * ref, atol=1e-12)
    # more amplifying ⇒ never more sparsity than a less amplifying block gets
    order = np.argsort(r)
    assert (np.diff(change[order, 0]) <= 1e-12).all()
    # blocks at or above the geometric mean (mean-centred) / all r > 1 (uncentred) get <= base
    protected = (u >= u.mean() - 1e-12) if center == "mean" else (r > 1)
    assert (change[protected] <= 1e-12).all()
    if center == "mean" and u.mean() <= 0:
        assert (change[r > 1] <= 1e-12).all()
    # after budget restoration with equal block sizes and no bound hit, nothing moves
    sizes = np.full(base.shape, 10.0)
    target = float((base * sizes).sum() / sizes.sum())
    fitted = fit_budget(out, sizes, target, 0.0, 0.99)
    if center == "mean" and out.min() > 0 and out.max() < 0.99:
        np.testing.assert_allclose(fitted, out, atol=1e-9)


def test_mean_centering_can_raise_an_amplifying_block_documented():
    # r all > 1: the least amplifying block lies below mean(u) and gets MORE sparsity (spec formula)
    _, delta = ab.correction_signal([2.0, 3.0, 3.0])
    assert delta[0] > 0 and delta[1] < 0
    _, delta = ab.correction_signal([2.0, 3.0, 3.0], center="none")
    assert (delta < 0).all()


def test_registered_correction_budget_bounds_direction(monkeypatch):
    stats = _fake_stats()
    r = np.array([4.0, 1.5, 0.9, 0.5, 0.4, 0.3])
    monkeypatch.setattr(ab, "coefficients_from_stats", lambda *a, **k: (r, []))
    base = allocate("atp", stats, 0.6, beta=0.02)
    for gamma, s_max in [(ab.DEFAULT_GAMMA, 0.99), (0.5, 0.7)]:
        plan = allocate("absorption", stats, 0.6, s_max=s_max, base="atp", gamma=gamma,
                        base_options={"beta": 0.02})
        assert plan.global_sparsity == pytest.approx(0.6, abs=1e-6)
        assert plan.values.min() >= 0 and plan.values.max() <= s_max + 1e-12
        np.testing.assert_allclose(plan.extras["absorption_r"], r)
        pre = plan.extras["pre_budget_per_block"]
        assert (pre[r > 1] <= base.per_block[r > 1] + 1e-12).all()
        if s_max == 0.99:  # no bound hit: equal blocks, ΣΔ = 0 ⇒ restoration is a no-op
            np.testing.assert_allclose(plan.per_block, pre, atol=1e-9)
            u = np.clip(np.log(r), -ab.CLIP, ab.CLIP)
            assert (plan.per_block[u > u.mean()] < base.per_block[u > u.mean()]).all()
            assert (plan.per_block[u < u.mean()] > base.per_block[u < u.mean()]).all()
    # gamma = 0: the base plan, and no measurement at all
    monkeypatch.setattr(ab, "coefficients_from_stats", lambda *a, **k: pytest.fail("measured with gamma=0"))
    p0 = allocate("absorption", stats, 0.6, base="atp", gamma=0.0, base_options={"beta": 0.02})
    np.testing.assert_allclose(p0.values, base.values, atol=1e-12)
    with pytest.raises(PrunekitError):
        allocate("absorption", stats, 0.6, base="absorption")
    with pytest.raises(PrunekitError):
        ab.absorption_correction(np.zeros(5), r)


def test_registered_correction_measures_once_and_caches():
    model = tiny_model("llama", layers=4)
    stats = Statistics(model, tiny_calib(n=2, seqlen=16), progress=False)
    calls = {"n": 0}
    orig = ab.Probe.__init__

    def counting(self, *a, **k):
        calls["n"] += 1
        orig(self, *a, **k)

    ab.Probe.__init__ = counting
    try:
        kw = dict(perturbation="noise", gamma=ab.DEFAULT_GAMMA)
        p1 = allocate("absorption", stats, 0.5, base="uniform", eta=1e-2, **kw)
        p2 = allocate("absorption", stats, 0.6, base="uniform", eta=1e-2, depth="mean", **kw)
        # a new Statistics object on the same model/calibration hits the disk cache
        p3 = allocate("absorption", Statistics(model, stats.calib, progress=False), 0.5, base="uniform", **kw)
    finally:
        ab.Probe.__init__ = orig
    assert calls["n"] == 1
    np.testing.assert_allclose(p1.extras["absorption_r"], p3.extras["absorption_r"])
    direct = ab.absorption_coefficients(model, stats.calib.input_ids, progress=False)
    np.testing.assert_allclose(p1.extras["absorption_r"], direct, rtol=1e-6)
    assert p1.global_sparsity == pytest.approx(0.5, abs=1e-6)
    assert p2.global_sparsity == pytest.approx(0.6, abs=1e-6)
    d = p1.extras["absorption_delta"]
    np.testing.assert_allclose(p1.per_block - 0.5, ab.DEFAULT_GAMMA * d, atol=1e-9)


def test_eta_sweep_table_shape():
    model = _ToyLM([1.0, 1.0, -0.5])
    probe = ab.Probe(model, _ids(n=2, T=8), progress=False)
    df = ab.eta_sweep(probe, etas=(1e-4, 1e-2))
    assert list(df["eta"].unique()) == [1e-4, 1e-2] and len(df) == 6
    summ = ab.transition_summary(df)
    assert list(summ["blocks"]) == [3, 3]
    from prunekit.experiments.absorption import verdicts
    lines = verdicts(df[df.eta == 1e-2]["r"].to_numpy(), df)
    assert len(lines) == 2 and all(isinstance(x, str) for x in lines)


def test_prune_based_coefficients_option():
    model = tiny_model("llama", layers=4)
    stats = Statistics(model, tiny_calib(n=2, seqlen=16), progress=False)
    plan = allocate("absorption", stats, 0.5, base="uniform", perturbation="prune", prune_metric="magnitude",
                    gamma=ab.DEFAULT_GAMMA)
    probe = ab.Probe(model, stats.calib.input_ids, progress=False)
    direct = [probe.pruned(l, 0.5, "magnitude").coefficient() for l in range(4)]
    np.testing.assert_allclose(plan.extras["absorption_r"], direct, rtol=1e-6)
    assert plan.global_sparsity == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(PrunekitError):
        allocate("absorption", stats, 0.5, base="uniform", perturbation="both")


# ---------------------------------------------------------------- pruning scale: matched noise, gamma selection

def test_matched_noise_uses_the_pruning_drift_per_block():
    """perturbation='matched': block l gets noise of size η_l = the drift pruning block l injects."""
    model = tiny_model("llama", layers=4)
    stats = Statistics(model, tiny_calib(n=2, seqlen=16), progress=False, cache=False)
    r, trajs = ab.coefficients_from_stats(stats, perturbation="matched", sparsity=0.6, prune_metric="magnitude")
    probe = ab.Probe(model, stats.calib.input_ids, progress=False)
    etas = [probe.pruned(l, 0.6, "magnitude").drift[0] for l in range(4)]
    direct = [probe.noise(l, eta=e).coefficient() for l, e in enumerate(etas)]
    np.testing.assert_allclose(r, direct, rtol=1e-6)
    # the injected noise has exactly the pruning drift's relative size (per token, so the mean too)
    np.testing.assert_allclose([t.drift[0] for t in trajs], etas, rtol=1e-5)


def test_tilt_correlation_is_pearson():
    d = np.array([0.3, -0.1, -0.2, 0.0])
    base = np.array([0.75, 0.62, 0.66, 0.77])
    t = base - 0.7
    dm, tm = d - d.mean(), t - t.mean()
    want = (dm * tm).sum() / np.sqrt((dm ** 2).sum() * (tm ** 2).sum())
    assert ab.tilt_correlation(d, base, 0.7) == pytest.approx(want, abs=1e-12)
    assert np.isnan(ab.tilt_correlation(d, np.full(4, 0.7), 0.7))


def test_gamma_selected_on_heldout_nll_and_recorded():
    """gamma=None picks the grid value whose pruned model has the lowest held-out NLL, measured
    independently here on a pruned copy; the model is restored; extras record the tilt correlation."""
    import copy
    from prunekit.allocation.plan import fit_budget
    from prunekit.solvers.prune import prune_model
    model = tiny_model("llama", layers=4, seed=3)
    stats = Statistics(model, tiny_calib(n=2, seqlen=16), progress=False, cache=False)
    held = tiny_calib(n=2, seqlen=16, seed=7).input_ids
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = ab.absorption(stats, 0.6, base="owl", score="wanda", heldout=held)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert plan.options["gamma_selected"] and plan.options["gamma"] in ab.GAMMA_GRID
    assert plan.options["perturbation"] == "prune" and plan.options["prune_metric"] == "wanda"
    base = allocate("owl", stats, 0.6)
    r = plan.extras["absorption_r"]
    got = {}
    for g in ab.GAMMA_GRID:
        m2 = copy.deepcopy(model)
        vals = fit_budget(ab.absorption_correction(base.values, r, g), stats.sizes, 0.6, 0.0, 0.99)
        prune_model(m2, stats.calib.input_ids, vals, "wanda", progress=False)
        with torch.no_grad():
            logits = m2(input_ids=held).logits
        got[g] = float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                         held[:, 1:].reshape(-1)))
    for g in ab.GAMMA_GRID:
        assert plan.extras["gamma_nll"][f"{g:.6g}"] == pytest.approx(got[g], rel=1e-5)
    assert plan.options["gamma"] == min(got, key=lambda g: (round(got[g], 6), g))
    assert plan.extras["tilt_correlation"] == pytest.approx(
        ab.tilt_correlation(plan.extras["absorption_delta"], base.per_block, 0.6), abs=1e-12)
