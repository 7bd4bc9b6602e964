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



def test_display_setup_shows_long_text_in_full():
    """Notebook tables (e.g. notebook 50's claims) are never cut to '…' after display.setup()."""
    import pandas as pd

    from prunekit.reporting.display import setup
    claim = "OWL's outlier-weighted allocation beats uniform Wanda at 70 % sparsity on LLaMA-7B " * 3
    try:
        setup()
        df = pd.DataFrame({"claim": [claim.strip()], "x": [1.0]})
        assert claim.strip() in df.to_html() and claim.strip() in repr(df)
        assert "…" not in df.to_html() and "..." not in df.to_html()
    finally:
        for opt in ("display.max_colwidth", "display.precision", "display.max_columns"):
            pd.reset_option(opt)


def test_comparison_lines_one_line_per_allocation_no_self_error_bars():
    import matplotlib
    import pandas as pd
    matplotlib.use("Agg")
    from prunekit.reporting.plots import comparison_lines
    t = pd.DataFrame({"allocation": ["uniform", "uniform", "owl", "owl"], "metric": ["wanda"] * 4,
                      "sparsity": [0.5, 0.7, 0.5, 0.7], "ppl_wikitext2": [30.0, 90.0, 29.0, 70.0]})
    fig = comparison_lines(t, value="ppl_wikitext2")
    ax = fig.axes[0]
    assert sorted(tuple(line.get_ydata()) for line in ax.lines) == [(29.0, 70.0), (30.0, 90.0)]
    assert not [c for c in ax.containers if getattr(c, "has_yerr", False)]  # no std column: no error bars
