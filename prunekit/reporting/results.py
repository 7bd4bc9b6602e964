"""Report: notebook results tables as JSON next to the rendered HTML reports."""
from __future__ import annotations

import os
from pathlib import Path

from prunekit.utils import atomic_write_json


def report_dir() -> Path:
    d = Path(os.environ.get("PRUNEKIT_REPORT_DIR", "reports"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def save_results(name: str, obj) -> Path:
    """Write ``obj`` (dict / list / DataFrame) to ``<report_dir>/<name>.json`` atomically."""
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict(orient="records")
    return atomic_write_json(report_dir() / f"{name}.json", obj)
