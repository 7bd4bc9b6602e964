"""Small shared helpers: atomic file writes, seeding, versions."""
from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from prunekit.errors import PrunekitError


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write via a temp file in the same directory + os.replace: readers never see a partial file."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise PrunekitError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise PrunekitError(f"cannot write {path}: directory {parent} is not writable")
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_json(path: str | Path, obj) -> Path:
    """Strict JSON (NaN/inf become null) written atomically."""
    return atomic_write_text(path, json.dumps(_finite(obj), indent=2, default=_jsonable, allow_nan=False) + "\n")


def _finite(o):
    if isinstance(o, float) or isinstance(o, np.floating):
        return float(o) if np.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if isinstance(o, np.ndarray):
        return _finite(o.tolist())
    return o


def check_writable(path: str | Path) -> None:
    """Fail before any expensive work if ``path`` could not be written later."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise PrunekitError(f"output {path} is a directory; give a file name")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise PrunekitError(f"cannot write {path}: directory {parent} does not exist or is not writable")


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def seed_everything(seed: int) -> None:
    """The reference repos seed python, numpy and torch in main()."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def versions() -> dict[str, str]:
    import importlib.metadata as md
    out = {}
    for pkg in ("prunekit", "torch", "transformers", "numpy", "lm_eval"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def tqdm(*args, **kwargs):
    """``tqdm.auto`` (a widget in Jupyter, text in a terminal) that also honours ``TQDM_DISABLE``
    when the caller passes ``disable=`` itself (tqdm reads the variable only as a default); the
    report renderer sets it so papermill runs stay silent."""
    from tqdm.auto import tqdm as _tqdm
    if os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes", "on"):
        kwargs["disable"] = True
    return _tqdm(*args, **kwargs)
