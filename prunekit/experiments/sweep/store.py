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


RECORD_HEAD = b'{"cell": "'  # every line append_record writes starts so (run_grid puts "cell" first)
RESULTS_LIMIT = 4 << 30


def _is_record(obj) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("cell"), str) and isinstance(obj.get("settings"), dict)


def _parse(p: Path) -> tuple[list[dict], bytes, int]:
    """Read-only: (records of the whole lines, the bytes after the last newline, their offset).
    Refuses (one line, file untouched) anything that is not a prunekit results file."""
    from prunekit.utils import parse_jsonl, read_regular
    try:
        data = read_regular(p, RESULTS_LIMIT, "results file ")
    except FileNotFoundError:
        return [], b"", 0
    good = data.rfind(b"\n") + 1
    out = parse_jsonl(data[:good], lambda i: f"{p}: line {i} is not a prunekit result record; not a prunekit "
                      "results file (left untouched; choose another --out)", _is_record)
    return out, data[good:], good


def read_results(path) -> list[dict]:
    """Records of a JSON-lines results file, read-only. A torn last line (a driver killed
    mid-write) is ignored; a complete last record that only lost its newline is kept."""
    p = Path(path)
    recs, tail, _ = _parse(p)
    if tail.strip():
        rec = _tail_record(p, recs, tail)
        if rec is not None:
            recs.append(rec)
    return recs


def _tail_record(p: Path, recs: list, tail: bytes):
    """The record in the bytes after the last newline, None when they are a torn prunekit record;
    anything else is refused (it is not provably ours)."""
    try:
        rec = json.loads(tail)
    except ValueError:
        rec = None
    if _is_record(rec):
        return rec
    if tail.startswith(RECORD_HEAD) or (not recs and RECORD_HEAD.startswith(tail)):
        return None  # a torn prunekit record
    raise PrunekitError(f"{p}: its last line is not a prunekit result record; not a prunekit results file "
                        "(left untouched; choose another --out)")


def repair_tail(path) -> None:
    """Before appending (under the lock): a complete record that lost its newline gets it back; a
    torn prunekit record is cut off. Nothing else is ever removed (``_parse`` refuses it first)."""
    p = Path(path)
    recs, tail, good = _parse(p)
    if not tail:
        return
    rec = _tail_record(p, recs, tail) if tail.strip() else None
    fd = os.open(p, os.O_RDWR | os.O_NOFOLLOW)
    try:
        if rec is not None or not tail.strip():
            os.lseek(fd, 0, os.SEEK_END)
            os.write(fd, b"\n")
        else:
            os.ftruncate(fd, good)
        os.fsync(fd)
    finally:
        os.close(fd)


class ResultsLock:
    """An exclusive, non-blocking ``flock`` on the results file for the length of a sweep: a second
    sweep on the same file refuses with one line instead of computing every cell twice."""

    def __init__(self, path):
        self.path, self.fd = Path(path), None

    def __enter__(self):
        import fcntl
        from prunekit.utils import refuse_special
        refuse_special(self.path, "results file ")
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK,
                              0o644)
        except OSError as e:
            raise PrunekitError(f"cannot open results file {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise PrunekitError(f"another sweep is writing {self.path}; wait for it to finish or give another "
                                "--out") from None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


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
    """One whole line per record with a single write, then flush + fsync: a kill loses no finished cell.
    The line starts with ``"cell"`` (``RECORD_HEAD``): a torn tail is then provably a prunekit record."""
    if "cell" in rec:
        rec = {"cell": rec["cell"], **rec}
    line = (json.dumps(_strict(rec), allow_nan=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
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
