"""The registry contract (prunekit/allocation/registry.py), for every registered method.

The budget tests call each method directly (``spec(name).fn``) and assert on its RAW output, before
``allocate``'s budget fit could hide a miss: every method's parameter-weighted mean equals the
target, and for methods registered ``exact=True`` the budget fit is a no-op. A method returning a
constant wrong plan fails them (tested below). Iterates the live registry, so a new method is
covered without editing this file."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_calib, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.allocation import registry
from prunekit.allocation.plan import fit_budget
from prunekit.allocation.registry import allocate, methods, register, spec
from prunekit.errors import PrunekitError

pytestmark = pytest.mark.usefixtures("one_thread")

TARGETS = (0.1, 0.5, 0.9)
# cheap settings for the methods that run experiments of their own (documented options)
CHEAP = {"svnup": lambda held: {"estimator": "exact", "heldout": held},
         "mrp": lambda held: {"delta": 0.02},
         "absorption": lambda held: {"heldout": held}}  # gamma chosen on these held-out windows


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from prunekit.scoring.statistics import Statistics, StatsCache
    model = tiny_model("llama", layers=4, seed=5)
    calib = tiny_calib(n=4, seqlen=24, seed=0)
    held = tiny_calib(n=2, seqlen=24, seed=1).input_ids
    stats = Statistics(model, calib, cache=StatsCache(tmp_path_factory.mktemp("stats")), progress=False)
    return model, stats, held


def _bases():
    return [m for m in methods() if m != "absorption"]


def _raw_values(out, sizes: np.ndarray) -> np.ndarray:
    """A method's raw return value (plan or array, per block or per matrix) as a (blocks, linears) array."""
    v = np.asarray(getattr(out, "values", out), dtype=float)
    return np.repeat(v[:, None], sizes.shape[1], axis=1) if v.ndim == 1 else v


def check_raw_budget(stats, method: str, target: float, **options) -> np.ndarray:
    """The budget contract on a method's raw output (raises AssertionError when it is broken)."""
    sp = spec(method)
    sizes = np.asarray(stats.sizes, dtype=float)
    raw = _raw_values(sp.fn(stats, target, **sp.check_options(options)), sizes)
    assert raw.shape == sizes.shape, (method, raw.shape)
    assert np.isfinite(raw).all(), method
    mean = float((raw * sizes).sum() / sizes.sum())
    assert abs(mean - target) < 1e-6, f"{method} at {target}: raw weighted mean {mean}"
    if sp.exact:  # also within the default bounds: the budget fit must not change anything
        np.testing.assert_allclose(fit_budget(raw, sizes, target), raw, atol=1e-9,
                                   err_msg=f"{method} is registered exact but fit_budget changed its plan")
    return raw


def test_registry_has_the_papers_methods():
    assert {"uniform", "owl", "alphapruning", "atp", "mrp", "svnup", "absorption"} <= set(methods())


@pytest.mark.parametrize("method", list(methods()))
def test_raw_output_meets_the_budget(env, method):
    _, stats, held = env
    for t in TARGETS:
        check_raw_budget(stats, method, t, **CHEAP.get(method, lambda h: {})(held))


@settings(max_examples=12, deadline=None)
@given(method=st.sampled_from(["uniform", "owl", "alphapruning", "atp"]), target=st.floats(0.05, 0.95))
def test_raw_output_meets_the_budget_at_any_target(env, method, target):
    check_raw_budget(env[1], method, target)


def test_budget_check_fails_for_a_constant_wrong_plan(env, monkeypatch):
    """The budget test can fail: an all-zeros method (registered for this test only) is caught,
    whether or not it claims exactness; so is an 'exact' method whose plan leaves the bounds."""
    monkeypatch.setattr(registry, "_REGISTRY", registry.specs())  # restored after the test
    _, stats, _ = env

    @register("zeros_for_test")
    def zeros(stats, target: float):
        return np.zeros(np.asarray(stats.sizes).shape)

    @register("zeros_exact_for_test", exact=True)
    def zeros_exact(stats, target: float):
        return np.zeros(np.asarray(stats.sizes).shape)

    @register("out_of_bounds_for_test", exact=True)
    def out_of_bounds(stats, target: float):  # budget-exact mean, but half the blocks above 0.99
        v = np.zeros(np.asarray(stats.sizes).shape)
        v[: v.shape[0] // 2] = 2 * target
        return v

    for name in ("zeros_for_test", "zeros_exact_for_test"):
        with pytest.raises(AssertionError, match="raw weighted mean"):
            check_raw_budget(stats, name, 0.5)
        with pytest.raises(AssertionError):
            test_raw_output_meets_the_budget(env, name)
    check_raw_budget(stats, "out_of_bounds_for_test", 0.4)  # 0.8 is within bounds: passes
    with pytest.raises(AssertionError, match="registered exact"):
        check_raw_budget(stats, "out_of_bounds_for_test", 0.7)
    # allocate alone would have hidden the zeros: its plan is budget-exact anyway
    assert abs(allocate("zeros_for_test", stats, 0.5).global_sparsity - 0.5) < 1e-6


@pytest.mark.parametrize("method", _bases())
def test_allocate_only_fits_the_budget_and_leaves_the_model(env, method):
    """``allocate`` = raw output + ``fit_budget`` (bounds), and allocation never modifies the model."""
    model, stats, held = env
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opts = CHEAP.get(method, lambda h: {})(held)
    sizes = np.asarray(stats.sizes, dtype=float)
    for t in TARGETS:
        plan = allocate(method, stats, t, **opts)
        raw = _raw_values(spec(method).fn(stats, t, **spec(method).check_options(opts)), sizes)
        assert plan.method == method and plan.values.shape == sizes.shape
        np.testing.assert_allclose(plan.values, fit_budget(raw, sizes, t), atol=1e-9)
        assert abs(plan.global_sparsity - t) < 1e-6, (method, t, plan.global_sparsity)
        assert plan.values.min() >= 0.0 and plan.values.max() <= 0.99 + 1e-12
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("base", _bases())
def test_absorption_wraps_every_method(env, base):
    _, stats, held = env
    opts = CHEAP.get(base, lambda h: {})(held)
    for t in TARGETS:
        ref = allocate(base, stats, t, **opts)
        plan = allocate("absorption", stats, t, base=base, base_options=opts, heldout=held)
        assert abs(plan.global_sparsity - t) < 1e-6
        assert plan.values.min() >= 0.0 and plan.values.max() <= 0.99 + 1e-12
        r = np.asarray(plan.extras["absorption_r"])
        u = np.asarray(plan.extras["absorption_u"])
        pre = np.asarray(plan.extras["pre_budget_per_block"])
        # what the code guarantees (allocation/absorption docstring): before the budget restoration a
        # block with u >= mean(u) never gains sparsity; every amplifier (r > 1) only when mean(u) <= 0
        top = u >= u.mean()
        assert (pre[top] <= ref.per_block[top] + 1e-12).all()
        if u.mean() <= 0:
            assert (pre[r > 1] <= ref.per_block[r > 1] + 1e-12).all()
        zero = allocate("absorption", stats, t, base=base, base_options=opts, gamma=0.0)
        np.testing.assert_allclose(zero.values, ref.values, atol=1e-12)


def test_amplifiers_protected_without_centring(env):
    """With center='none' (Δ = −u) every amplifying block is protected whatever mean(u) is."""
    _, stats, held = env
    ref = allocate("owl", stats, 0.5)
    plan = allocate("absorption", stats, 0.5, base="owl", center="none", heldout=held)
    r, pre = np.asarray(plan.extras["absorption_r"]), np.asarray(plan.extras["pre_budget_per_block"])
    assert (pre[r > 1] <= ref.per_block[r > 1] + 1e-12).all()


def test_options_are_checked_before_the_method_runs(env):
    _, stats, _ = env
    for method, bad in [("owl", {"metric": "nope"}), ("owl", {"nope": 1}), ("owl", {"m": 0.0}), ("owl", {"lam": -1.0}),
                        ("alphapruning", {"estimator": "nope"}), ("alphapruning", {"mapping": "x"}),
                        ("alphapruning", {"epsilon": 1.5}), ("atp", {"beta": -0.1})]:
        with pytest.raises(PrunekitError):
            allocate(method, stats, 0.5, **bad)


def test_the_spec_documents_every_option():
    """docs/methods.md names every registered option's CLI flag (the spec cannot silently go stale)."""
    from pathlib import Path

    def flag(method, option):  # the rule as the spec states it
        prefix = {"alphapruning": "alpha"}.get(method, method)
        return f"--{prefix}-{'lambda' if option == 'lam' else option.replace('_', '-')}"

    doc = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text()
    missing = [flag(m, o) for m, sp in registry.specs().items() for o in sp.options if flag(m, o) not in doc]
    assert not missing, f"docs/methods.md does not mention {missing}"


def test_mrp_ranks_by_wandas_score_when_sparsegpt_prunes():
    # chosen on held-out NLL (docs/results.md); other solvers still pass their own score, and an
    # explicit score wins
    from prunekit.allocation import with_solver_metric
    assert with_solver_metric("mrp", {}, "sparsegpt") == {"score": "wanda"}
    assert with_solver_metric("mrp", {}, "magnitude") == {"score": "magnitude"}
    assert with_solver_metric("mrp", {"score": "sparsegpt"}, "sparsegpt") == {"score": "sparsegpt"}
    assert with_solver_metric("owl", {}, "sparsegpt") == {}
