"""Rank correlation and spread (prunekit/experiments/correlation.py) against direct computations."""
from __future__ import annotations

import numpy as np
import pytest

from prunekit.experiments.correlation import bootstrap_spearman, coefficient_of_variation, spearman


def _pearson_of_ranks(x, y):  # Spearman by its definition (no ties in the data below)
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def test_spearman_is_pearson_of_ranks():
    x = np.arange(10.0)
    assert spearman(x, x ** 3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=30), rng.normal(size=30)
    assert spearman(a, b) == pytest.approx(_pearson_of_ranks(a, b))
    assert np.isnan(spearman(a, np.ones(30)))  # undefined for a constant side, no warning raised


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=30), rng.normal(size=30)
    r1 = bootstrap_spearman(a, a + 0.1 * b, 300, seed=4)
    assert r1 == bootstrap_spearman(a, a + 0.1 * b, 300, seed=4)
    assert r1 != bootstrap_spearman(a, a + 0.1 * b, 300, seed=5)
    assert r1[1] <= r1[0] <= r1[2] and r1[1] > 0.8
    # three points: many resamples are constant (undefined); they are dropped, not propagated
    rho, lo, hi = bootstrap_spearman([1.0, 2.0, 3.0], [1.0, 1.0, 2.0], 200, seed=0)
    assert np.isfinite([rho, lo, hi]).all() and lo <= hi


def test_coefficient_of_variation_is_population_std_over_mean():
    x = np.array([1.0, 2.0, 3.0, 6.0])
    assert coefficient_of_variation(x) == pytest.approx(np.sqrt(((x - x.mean()) ** 2).mean()) / x.mean())
    assert np.isnan(coefficient_of_variation([-1.0, 0.5]))
