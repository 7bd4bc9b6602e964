"""Notebook display defaults: ``from prunekit.reporting.display import setup; setup()``."""
from __future__ import annotations


def setup(precision: int = 3) -> None:
    """Tables show ``precision`` decimals (not pandas' raw 6), text cells in full (a claim is never cut
    to "…"; HTML tables wrap it) and figures render as PNG images."""
    import pandas as pd
    pd.set_option("display.precision", precision)
    pd.set_option("display.max_columns", 30)
    pd.set_option("display.max_colwidth", None)
    try:
        from matplotlib_inline.backend_inline import set_matplotlib_formats
        set_matplotlib_formats("png")
    except ImportError:  # outside IPython
        pass
