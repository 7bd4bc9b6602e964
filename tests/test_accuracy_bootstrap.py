"""The paired accuracy bootstrap over examples × seeds against independent computations."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from prunekit.errors import PrunekitError
from prunekit.experiments.accuracy import accuracy_bootstrap, examples_needed


def _pair(rng, S, N, p_a=0.6, flip=0.2):
    a = (rng.random((S, N)) < p_a).astype(float)
    b = np.where(rng.random((S, N)) < flip, 1 - a, a)  # B disagrees with A on a fraction `flip`
    return a, b


def test_one_seed_one_task_matches_scipy_paired_percentile_bootstrap():
    rng = np.random.default_rng(1)
    a, b = _pair(rng, 1, 600)
    ours = accuracy_bootstrap(a, b, ["t"] * 600, n_boot=8000, seed=0)
    d = a[0] - b[0]
    ref = stats.bootstrap((d,), np.mean, n_resamples=8000, method="percentile", confidence_level=0.95,
                          rng=np.random.default_rng(7)).confidence_interval
    assert ours["mean"] == pytest.approx(100 * d.mean())
    assert ours["lo"] == pytest.approx(100 * ref.low, abs=0.35)
    assert ours["hi"] == pytest.approx(100 * ref.high, abs=0.35)


def test_point_estimate_is_the_mean_over_seeds_of_task_mean_accuracy_differences():
    rng = np.random.default_rng(2)
    tasks = np.array(["x"] * 50 + ["y"] * 200 + ["z"] * 30)
    a, b1 = _pair(rng, 3, len(tasks))
    _, b2 = _pair(rng, 3, len(tasks))
    res = accuracy_bootstrap(a, np.stack([b1, b2]), tasks, n_boot=200)
    want = []
    for s in range(3):  # loops, not the vectorised code: per seed, task means, best baseline
        acc = lambda x: np.mean([x[s][tasks == t].mean() for t in ("x", "y", "z")])  # noqa: B023
        want.append(acc(a) - max(acc(b1), acc(b2)))
    assert res["mean"] == pytest.approx(100 * np.mean(want))
    assert res["lo"] <= res["mean"] <= res["hi"]


def test_interval_width_matches_the_normal_approximation_over_examples():
    # many examples, one task, identical seeds: the half-width is ≈ 1.96 · sd(d) / sqrt(N)
    rng = np.random.default_rng(3)
    a1, b1 = _pair(rng, 1, 4000)
    a, b = np.repeat(a1, 3, 0), np.repeat(b1, 3, 0)
    res = accuracy_bootstrap(a, b, ["t"] * 4000, n_boot=4000)
    d = a1[0] - b1[0]
    half = 100 * 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    assert (res["hi"] - res["lo"]) / 2 == pytest.approx(half, rel=0.1)


def test_examples_needed_and_bad_input():
    # ± 1 point at 20 % disagreement over 3 seeds: 0.2 · 196² / 3
    assert examples_needed(0.2, 3) == int(np.ceil(0.2 * 196 ** 2 / 3))
    with pytest.raises(PrunekitError):
        accuracy_bootstrap(np.zeros((2, 5)), np.zeros((2, 4)), ["t"] * 5)
    with pytest.raises(PrunekitError):
        examples_needed(0.0, 3)
