"""Figures (prunekit/reporting/plots.py) show the plans they are given."""
from __future__ import annotations

import numpy as np

from prunekit.allocation.registry import allocate


# ---------------------------------------------------------------- plots
def test_plots_return_figures(tiny_stats):
    stats = tiny_stats
    import matplotlib
    matplotlib.use("Agg")
    from prunekit.reporting.plots import block_metric, sparsity_profile
    plans = {m: allocate(m, stats, 0.5) for m in ("uniform", "atp", "owl")}
    fig = sparsity_profile(plans, title="t")
    labels = [ln.get_label() for ln in fig.axes[0].lines]
    assert labels == ["uniform", "atp", "owl", "target"]
    np.testing.assert_allclose(fig.axes[0].lines[1].get_ydata(), plans["atp"].per_block)
    fig2 = block_metric(plans["owl"].extras["lod"], "LOD (%)")
    assert fig2.axes[0].get_ylabel() == "LOD (%)"
    fig3 = sparsity_profile([plans["atp"]])
    assert [ln.get_label() for ln in fig3.axes[0].lines] == ["atp", "target"]
    import matplotlib.pyplot as plt
    plt.close("all")
