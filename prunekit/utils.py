"""Small shared helpers: the one file writer (atomic), seeding, versions."""
from __future__ import annotations

import json
import os
import random
import stat
import tempfile
from pathlib import Path

import numpy as np
import torch

from prunekit.errors import PrunekitError


def refuse_special(path: Path, what: str = "") -> None:
    """Refuse a target that is a symlink, directory, device, FIFO or socket (lstat: never followed)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise PrunekitError(f"cannot write {what}{path}: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        raise PrunekitError(f"{what}{path} is not a regular file (symlink, directory, device or pipe); "
                            "refusing to replace it")


def atomic_write_with(path: str | Path, write, what: str = "") -> Path:
    """The one writer of every file prunekit writes. ``write(f)`` streams the content into ``f``, a
    binary file object (``np.savez``, ``write_safetensors``, ``f.write``). The target is never
    followed through a symlink, never a device, FIFO or directory; the bytes go to a staging file
    with an unpredictable name created with O_EXCL (``mkstemp``) in the target's directory, are
    fsynced, and ``os.replace`` puts them in place, so readers never see a partial file. A failed
    ``write`` leaves no staging file behind."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise PrunekitError(f"cannot write {what}{path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise PrunekitError(f"cannot write {what}{path}: directory {parent} is not writable")
    refuse_special(path, what)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        publish_modes(tmp)  # mkstemp creates 0600
        refuse_special(path, what)  # a symlink planted meanwhile is replaced, never followed; refuse anyway
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_bytes(path: str | Path, data: bytes, what: str = "") -> Path:
    """``atomic_write_with`` of a bytes object."""
    return atomic_write_with(path, lambda f: f.write(data), what)


_ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}


def write_safetensors(f, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Stream ``tensors`` into the binary file object ``f`` in the safetensors format (8-byte
    little-endian header length, JSON header padded to 8 bytes, raw little-endian data), one tensor
    at a time: the payload is never copied into one bytes object (``safetensors.torch.save``
    would hold a second copy of an offloaded block in RAM). For ``atomic_write_with``."""
    import struct
    header: dict = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}} if metadata else {}
    parts, off = [], 0
    # widest elements first (as safetensors orders them): every tensor starts aligned to its element size
    for k in sorted(tensors, key=lambda k: (-tensors[k].element_size(), k)):
        t = tensors[k].detach().to("cpu").contiguous()
        if t.dtype not in _ST_DTYPES:
            raise TypeError(f"write_safetensors: tensor {k} has unsupported dtype {t.dtype}")
        n = t.numel() * t.element_size()
        header[k] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + n]}
        parts.append(t)
        off += n
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    f.write(struct.pack("<Q", len(h)) + h)
    for t in parts:
        if t.numel():
            f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))


def atomic_write_text(path: str | Path, text: str, what: str = "") -> Path:
    """``atomic_write_bytes`` of UTF-8 text."""
    return atomic_write_bytes(path, text.encode(), what)


def read_regular(path: str | Path, limit: int = 64 << 20, what: str = "") -> bytes:
    """The bytes of a regular file, read without following a final symlink into a FIFO or device
    (O_NONBLOCK: opening a FIFO never blocks) and only up to ``limit`` bytes; anything else is a
    one-line error. FileNotFoundError passes through for the caller to word."""
    path = Path(path)
    st = os.stat(path)  # a symlink to a regular file is fine for reading
    if not stat.S_ISREG(st.st_mode):
        raise PrunekitError(f"{what}{path} is not a regular file (directory, device or pipe)")
    if st.st_size > limit:
        raise PrunekitError(f"{what}{path} is {st.st_size} bytes, over the {limit}-byte limit for this file")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped between stat and open
            raise PrunekitError(f"{what}{path} is not a regular file (directory, device or pipe)")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(limit + 1)[:limit]
    finally:
        os.close(fd)


def parse_jsonl(data: bytes, bad, ok=lambda rec: isinstance(rec, dict)) -> list[dict]:
    """The records of JSON-lines ``data`` (blank lines skipped); the first line that does not parse or
    fails ``ok`` raises ``PrunekitError(bad(line_number))``."""
    out = []
    for i, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if not ok(rec):
            raise PrunekitError(bad(i))
        out.append(rec)
    return out


def read_jsonl(path: str | Path) -> list[dict]:
    """The JSON objects of a JSON-lines file read with ``read_regular`` (absent: none); a line that is not a
    JSON object is a one-line error naming it. For study files rewritten whole; a sweep results file, which
    is appended to and may end in a torn record, is read by ``sweep.store`` (same parser)."""
    try:
        data = read_regular(path)
    except FileNotFoundError:
        return []
    return parse_jsonl(data, lambda i: f"{path}:{i} is not a JSON record; move the file away to start again")


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


def check_writable(path: str | Path, what: str = "output", directory: bool = False) -> None:
    """Fail before any expensive work if ``path`` could not be written later: its parent must be an
    existing writable directory and ``path`` absent or a regular file (``directory=True``: an empty
    directory) — never a symlink, device, pipe or socket, which an atomic rename would replace."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not str(path) or path.name in ("", ".", ".."):
        raise PrunekitError(f"{what} '{path}' is not a file name")
    if parent.exists() and not parent.is_dir():
        raise PrunekitError(f"cannot write {what} {path}: {parent} is a file, not a directory (directory does not exist)")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise PrunekitError(f"cannot write {what} {path}: {e.strerror}") from None
    if st is not None:
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            raise PrunekitError(f"{what} {path} is a symlink; give the real path")
        if directory:
            if not stat.S_ISDIR(mode):
                raise PrunekitError(f"{what} {path} exists and is not a directory")
            if any(path.iterdir()):
                raise PrunekitError(f"{what} {path} exists and is not empty; choose a new directory")
        elif stat.S_ISDIR(mode):
            raise PrunekitError(f"{what} {path} is a directory; give a file name")
        elif not stat.S_ISREG(mode):
            raise PrunekitError(f"{what} {path} is not a regular file (device, pipe or socket); refusing to replace it")
    if not parent.is_dir():
        raise PrunekitError(f"cannot write {what} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PrunekitError(f"cannot write {what} {path}: directory {parent} is not writable")


def publish_modes(root: str | Path) -> None:
    """Give a written file or directory tree the modes of a normal write under the current umask
    (0644 files / 0755 directories with umask 022): mkdtemp and mkstemp create 0700/0600."""
    root = Path(root)
    mask = os.umask(0)
    os.umask(mask)
    paths = [root] + (sorted(root.rglob("*")) if root.is_dir() else [])
    for p in paths:
        if p.is_symlink():
            continue
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


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


def env_bars_off() -> bool:
    """TQDM_DISABLE set: tqdm reads it only as a default, so an explicit ``disable=False`` would win."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes", "on")


def bars_disabled(progress: bool = True) -> bool:
    """tqdm's ``disable`` for a prunekit bar: off when the caller says so or when TQDM_DISABLE is set."""
    return (not progress) or env_bars_off()


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
    if env_bars_off():
        kwargs["disable"] = True
    return _tqdm(*args, **kwargs)


def source_digest(root: str | Path, suffixes: tuple[str, ...] = (".py",)) -> str:
    """sha256 (hex) over a source tree: every file under ``root`` ending in ``suffixes`` (outside
    ``__pycache__``), by path relative to ``root`` (POSIX) and bytes, length-prefixed, in path order.
    Equal for a checkout and any install of the same code; sees uncommitted edits. The identity of
    the running code in provenance (``.py``) and in sweep results files (``.py`` + grid ``.yaml``)."""
    import hashlib
    root = Path(root)
    files = sorted((p for p in root.rglob("*") if p.suffix in suffixes and p.is_file()
                    and "__pycache__" not in p.relative_to(root).parts),
                   key=lambda p: p.relative_to(root).as_posix())
    h = hashlib.sha256()
    for f in files:
        rel, data = f.relative_to(root).as_posix().encode(), f.read_bytes()
        h.update(len(rel).to_bytes(8, "big") + rel + len(data).to_bytes(8, "big") + data)
    return h.hexdigest()

