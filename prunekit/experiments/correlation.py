"""Rank correlation and spread statistics of the studies, from ``scipy.stats``."""
from __future__ import annotations

import warnings

import numpy as np
from scipy import stats


def spearman(x, y) -> float:
    """Spearman rank correlation (ties averaged); NaN when either side is constant."""
    with warnings.catch_warnings():  # constant input: scipy warns and returns NaN, which we report
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        r = stats.spearmanr(x, y).statistic
    return float(r) if np.isfinite(r) else float("nan")


def bootstrap_spearman(x, y, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(rho, lo, hi): Spearman correlation and its percentile bootstrap CI (pairs resampled, seeded).
    Resamples whose correlation is undefined (a constant side) are left out of the quantiles."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    with warnings.catch_warnings():  # NaN resamples make scipy's own interval NaN: we drop them below
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap((x, y), spearman, paired=True, vectorized=False, n_resamples=n_boot,
                              method="percentile", confidence_level=level, rng=np.random.default_rng(seed))
    boots = res.bootstrap_distribution
    a = (1 - level) / 2
    lo, hi = np.nanquantile(boots, [a, 1 - a]) if np.isfinite(boots).any() else (np.nan, np.nan)
    return spearman(x, y), float(lo), float(hi)


def coefficient_of_variation(x) -> float:
    """std/mean over blocks (population std); NaN when the mean is not positive."""
    x = np.asarray(x, dtype=float)
    return float(stats.variation(x)) if x.mean() > 0 else float("nan")
