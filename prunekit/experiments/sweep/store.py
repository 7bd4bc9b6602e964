"""The results store: a JSON-lines file with one record per finished cell, keyed by the cell's
settings and the code version, appended with one write + fsync so a kill loses no finished cell."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from prunekit import utils
from prunekit.errors import PrunekitError
from prunekit.experiments.cells import row

VOLATILE = ("timings_s", "cell_seconds", "cell_cpu_seconds", "attempt")  # differ between two runs of the same cell


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def cell_key(settings: dict) -> str:
    """Stable id of a cell's resolved settings (sha256 of canonical JSON, 16 hex digits)."""
    return hashlib.sha256(_canonical(settings).encode()).hexdigest()[:16]


_CODE_VERSION = None


def source_digest(root: Path) -> str:
    """16 hex digits of ``utils.source_digest`` over every ``*.py`` and grid ``*.yaml`` under ``root``:
    unlike the git commit it sees uncommitted edits, and a commit that touches only docs, tests or
    notebooks leaves it (and so a filled results file) valid."""
    return utils.source_digest(root, (".py", ".yaml"))[:16]


def code_version() -> dict:
    """What a result depends on besides its settings: package versions plus ``source_digest`` of the
    prunekit package (a re-run after a code change recomputes)."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        v = utils.versions()
        v = {k: v[k] for k in ("prunekit", "torch", "transformers") if k in v}
        v["source"] = source_digest(Path(__file__).resolve().parents[2])
        _CODE_VERSION = v
    return dict(_CODE_VERSION)


def read_results(path) -> list[dict]:
    """Records of a JSON-lines results file. A torn last line (a driver killed mid-write) is
    dropped from the file, so the next append starts on a clean line."""
    p = Path(path)
    if not p.exists():
        return []
    data = p.read_bytes()
    good = data.rfind(b"\n") + 1
    if good < len(data):  # torn tail: keep only whole lines
        with open(p, "r+b") as f:
            f.truncate(good)
            f.flush()
            os.fsync(f.fileno())
    out = []
    for i, line in enumerate(data[:good].splitlines()):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            raise PrunekitError(f"{p}: line {i + 1} is not JSON; not a prunekit results file") from None
    return out


def _strict(o):
    """Strict-JSON form of a record (numpy / torch values to Python, NaN and inf to null)."""
    import math
    if isinstance(o, dict):
        return {str(k): _strict(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_strict(v) for v in o]
    if hasattr(o, "tolist"):  # numpy arrays and scalars, torch tensors
        return _strict(o.tolist())
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, (str, int, bool)) or o is None:
        return o
    return str(o)


def append_record(path, rec: dict) -> None:
    """One whole line per record with a single write, then flush + fsync: a kill loses no finished cell."""
    line = (json.dumps(_strict(rec), allow_nan=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        n = os.write(fd, line)
        while n < len(line):  # os.write may be partial on some filesystems
            n += os.write(fd, line[n:])
        os.fsync(fd)
    finally:
        os.close(fd)


def comparable(rec: dict) -> dict:
    """A record without the fields that differ between two runs of the same cell (timings)."""
    return {k: v for k, v in rec.items() if k not in VOLATILE}


def frame(records: list[dict]):
    """DataFrame of records: model + ``Session.sweep``'s columns + cell, status, error."""
    import pandas as pd
    rows = []
    for rec in records:
        st = rec["settings"]
        base = {"model": st["model"]}
        if rec.get("status") == "ok":
            r = row(rec, st)
            r["seconds"] = rec.get("cell_seconds")
            r["cpu_seconds"] = rec.get("cell_cpu_seconds")
        else:
            r = {"seed": st["seed"], "allocation": st["allocation"], "method": st["method"],
                 "metric": st["metric"], "sparsity": st["sparsity"]}
        rows.append({**base, **r, "cell": rec["cell"], "status": rec.get("status"), "error": rec.get("error")})
    return pd.DataFrame(rows)
