"""Every registered allocation, and the absorption correction around each of them, returns a
budget-exact plan within bounds at 0.1…0.9 on a tiny model. Iterates the live registry, so a new
plugin is covered without editing this file."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_calib, tiny_model

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
    from prunekit.allocation.registry import methods
    return [m for m in methods() if m != "absorption"]


def test_registry_has_the_papers_methods():
    from prunekit.allocation.registry import methods
    assert {"uniform", "owl", "alphapruning", "atp", "mrp", "svnup", "absorption"} <= set(methods())


@pytest.mark.parametrize("method", _bases())
def test_every_method_budget_exact_and_bounded(env, method):
    from prunekit.allocation.registry import allocate
    model, stats, held = env
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for t in TARGETS:
        plan = allocate(method, stats, t, **CHEAP.get(method, lambda h: {})(held))
        assert plan.method == method
        assert plan.values.shape == stats.sizes.shape
        assert abs(plan.global_sparsity - t) < 1e-6, (method, t, plan.global_sparsity)
        assert plan.values.min() >= 0.0 and plan.values.max() <= 0.99 + 1e-12
    for k, v in model.state_dict().items():  # allocation never leaves the model modified
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("base", _bases())
def test_absorption_wraps_every_method(env, base):
    from prunekit.allocation.registry import allocate
    _, stats, held = env
    opts = CHEAP.get(base, lambda h: {})(held)
    for t in TARGETS:
        ref = allocate(base, stats, t, **opts)
        plan = allocate("absorption", stats, t, base=base, base_options=opts, heldout=held)
        assert abs(plan.global_sparsity - t) < 1e-6
        assert plan.values.min() >= 0.0 and plan.values.max() <= 0.99 + 1e-12
        r = np.asarray(plan.extras["absorption_r"])
        pre = np.asarray(plan.extras["pre_budget_per_block"])
        u = np.asarray(plan.extras["absorption_u"])
        # blocks amplifying at least as much as the (geometric) mean never gain sparsity (module doc)
        assert (pre[u >= u.mean()] <= ref.per_block[u >= u.mean()] + 1e-12).all()
        zero = allocate("absorption", stats, t, base=base, base_options=opts, gamma=0.0)
        np.testing.assert_allclose(zero.values, ref.values, atol=1e-12)
