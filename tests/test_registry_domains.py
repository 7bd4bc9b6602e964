"""The registry contract is the only place option values are checked, and its bounds are each
method's true domain: for every registered method and option, a value just outside a declared
bound (or a non-choice) is refused by ``check_options`` with one line, and a value just inside
(every choice) runs the method to a plan on a tiny model without raising. Iterates the live
registry, so a new option is covered without editing this file."""
from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import tiny_calib, tiny_model

from prunekit.allocation import specs
from prunekit.allocation.registry import spec
from prunekit.errors import PrunekitError

pytestmark = pytest.mark.usefixtures("one_thread")

TARGET = 0.5
BLOCKS = 4
HELD = tiny_calib(n=1, seqlen=12, seed=1).input_ids
# cheapest settings for the methods that run experiments of their own; the option under test wins
CHEAP = {"mrp": {"delta": 0.05},
         "svnup": {"estimator": "exact", "heldout": HELD},
         "absorption": {"base": "uniform", "gamma": 0.1, "heldout": HELD, "perturbation": "noise"}}
# options that only act together with another option's value: set it, so the value is exercised
ACTIVATE = {("svnup", "temperature"): {"mapping": "softmax"},
            **{("svnup", k): {"estimator": "sliding_window"} for k in ("window", "disjoint", "background")},
            **{("svnup", k): {"estimator": "monte_carlo"} for k in ("n_permutations", "seed")},
            ("mrp", "denominator"): {"reading": "frozen"}, ("mrp", "blocksize"): {"score": "sparsegpt"},
            ("absorption", "prune_metric"): {"perturbation": "prune"}}
# options whose values are not numbers or choices: a dataset name needs real text (the tiny
# calibration is synthetic); they are passed as held-out tensors above
SKIP = {("svnup", "heldout"), ("absorption", "heldout")}


@pytest.fixture(scope="module")
def stats():
    from prunekit.scoring.statistics import Statistics
    return Statistics(tiny_model("llama", layers=BLOCKS, seed=5), tiny_calib(n=2, seqlen=12), cache=False,
                      progress=False)


def _inside_outside(opt) -> tuple[list, list]:
    """Values just inside / just outside every declared bound of ``opt`` (every choice / a non-choice)."""
    if opt.choices is not None:
        return list(opt.choices) + ([None] if opt.nullable else []), ["not-a-choice"]
    inside, outside = ([None] if opt.nullable else []), []
    if opt.type is bool:
        return [True, False], ["maybe"]
    if opt.type is dict:
        return [{}], ["not-a-dict"]
    if opt.type not in (int, float):
        return inside, outside
    step = (lambda v, d: v + d) if opt.type is int else (lambda v, d: math.nextafter(v, v + d))
    if opt.low is not None:
        inside.append(step(opt.low, 1) if opt.low_open else opt.low)
        outside.append(opt.low if opt.low_open else step(opt.low, -1))
    high = opt.high
    if opt.at_most_blocks:
        high = BLOCKS if high is None else min(high, BLOCKS)
    if high is not None:
        open_high = opt.high_open and high == opt.high
        inside.append(step(high, -1) if open_high else high)
        outside.append(high if open_high else step(high, 1))
    return inside, outside


def _cases(kind: int):
    for name, sp in sorted(specs().items()):
        for opt in sp.options.values():
            if (name, opt.name) not in SKIP:
                for v in _inside_outside(opt)[kind]:
                    yield pytest.param(name, opt.name, v, id=f"{name}-{opt.name}-{v!r}")


def _target_and_extra(method: str, option: str, value) -> tuple[float, dict]:
    """MRP's s0 and s_cap are bounded by the target too (s0 <= target <= s_cap): the bound's edge is
    reached by moving the target with it."""
    if method == "mrp" and option in ("s0", "s_cap") and value is not None:
        return float(value), ({"s_cap": max(0.95, float(value))} if option == "s0" else {})
    return TARGET, {}


@pytest.mark.parametrize("method,option,value", list(_cases(1)))
def test_outside_is_refused_by_the_contract_in_one_line(method, option, value):
    with pytest.raises(PrunekitError) as e:
        spec(method).check_options({**CHEAP.get(method, {}), option: value}, BLOCKS, TARGET)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("method,option,value", list(_cases(0)))
def test_inside_runs_the_method_to_a_plan(stats, method, option, value):
    sp = spec(method)
    target, extra = _target_and_extra(method, option, value)
    opts = sp.check_options({**CHEAP.get(method, {}), **ACTIVATE.get((method, option), {}), **extra, option: value},
                            BLOCKS, target)
    out = sp.fn(stats, target, **opts)
    vals = np.asarray(getattr(out, "values", out), dtype=float)
    assert vals.shape[0] == BLOCKS and np.isfinite(vals).all()


@pytest.mark.parametrize("method,options,target,blocks", [
    ("mrp", {"s0": 0.5 + 1e-9}, 0.5, None),                      # s0 <= target
    ("mrp", {"s_cap": 0.5 - 1e-9}, 0.5, None),                   # s_cap >= target
    ("svnup", {}, 0.0, None),                                    # the layer game prunes at the target
    ("svnup", {"estimator": "exact"}, 0.5, 17),                  # 2^17 coalitions
    ("absorption", {"probe_seqlen": 1}, 0.5, None),              # drift needs two positions
    ("absorption", {"heldout_seqlen": 1}, 0.5, None),
    ("absorption", {"base": "absorption"}, 0.5, None),           # cannot wrap itself
    ("absorption", {"base": "owl", "base_options": {"m": 0.0}}, 0.5, None),  # the base's own contract
    ("absorption", {"base": "owl", "base_options": {"nope": 1}}, 0.5, None),
])
def test_cross_option_constraints_are_in_the_contract(method, options, target, blocks):
    with pytest.raises(PrunekitError) as e:
        spec(method).check_options(options, blocks, target)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("method,option,value,target", [
    ("mrp", "s0", 0.5, 0.5), ("mrp", "s_cap", 0.5, 0.5), ("mrp", "refresh", 1, 0.5),
    ("absorption", "probe_seqlen", 2, 0.5),
    ("absorption", "heldout_seqlen", 2, 0.5), ("absorption", "base_options", {"lam": 0.1}, 0.5),
])
def test_cross_option_edges_run(stats, method, option, value, target):
    base = {"base": "owl"} if option == "base_options" else {}
    sp = spec(method)
    opts = sp.check_options({**CHEAP.get(method, {}), **base, option: value}, BLOCKS, target)
    vals = np.asarray(sp.fn(stats, target, **opts).values, dtype=float)
    assert np.isfinite(vals).all()
