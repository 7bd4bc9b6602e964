"""Score: dense statistics (Wanda norms, Hessian diagonals, outlier ratios, ESD inputs) with a
verified on-disk cache."""
from prunekit.scoring.statistics import Statistics, StatsCache  # noqa: F401
