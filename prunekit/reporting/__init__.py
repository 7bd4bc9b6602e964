"""Reporting: results files, notebook rendering (``python -m prunekit.reporting``) and figures."""
