"""Verified cache entries: every entry carries a manifest of what it stands for and what it holds.

Three kinds of entries live under ``$PRUNEKIT_CACHE``:

* model directories (``dense/``: dequantised GGUF models, the tiny-llama build): ``prunekit.json``
  holds the identity (e.g. the full SHA-256 of the source GGUF) and the size + SHA-256 of every file;
* token arrays (``tokens/*.npz``): a ``manifest`` array inside the file holds the identity (dataset
  name, split, source-file hash, tokenizer fingerprint) and the SHA-256 of the arrays;
* statistics (``stats/*.safetensors``): their key and checksum in the safetensors metadata.

An entry that is missing a file, truncated, altered, or stands for something else (a PTB token
array copied over the WikiText-2 one) is reported with a ``CacheWarning`` and rebuilt, never used.
Every file goes through the one writer (``prunekit.utils.atomic_write_with``: an unpredictable
O_EXCL staging name, fsync, rename into place, never through a symlink). Staging *directories*
(a model being saved) carry the writer's PID and a marker; those a killed writer left (its PID no
longer alive) are removed on the next run.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

MANIFEST = "prunekit.json"


def cache_dir() -> Path:
    """``$PRUNEKIT_CACHE``, default ``~/.cache/prunekit``: dense models, token arrays, statistics,
    offload work directories."""
    return Path(os.environ.get("PRUNEKIT_CACHE", Path.home() / ".cache" / "prunekit"))
MANIFEST_VERSION = 2


class CacheWarning(UserWarning):
    """A cache entry was rejected (and will be rebuilt)."""


def warn(msg: str) -> None:
    warnings.warn(msg, CacheWarning, stacklevel=3)


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ----------------------------------------------------------------------------- staging

def staging_tag() -> str:
    """Infix of every staging name this process writes: ``.tmp-<pid>-``."""
    return f".tmp-{os.getpid()}-"


_STAGING = re.compile(r"\.tmp-(\d+)-")
LEGACY_STAGING_AGE_S = 24 * 3600


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


STAGING_MARKER = ".prunekit-staging"  # inside every staging directory written next to a user's target


def make_staging_dir(parent: Path, name: str) -> Path:
    """A staging directory ``.<name>.tmp-<pid>-XXXX`` in ``parent`` holding ``STAGING_MARKER``, so a
    later clean-up can tell it from a user's folder that only looks alike."""
    import tempfile
    d = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}{staging_tag()}"))
    (d / STAGING_MARKER).write_text(str(os.getpid()))
    return d


def clean_staging(folder: Path, prefix: str = ".", marked: bool = False) -> list[Path]:
    """Remove staging files/directories in ``folder`` (names starting with ``prefix``) whose writer
    is gone; returns what was removed. ``marked`` (a user's folder, e.g. the parent of
    ``--save-model``): only directories holding ``STAGING_MARKER``, never a file or a symlink."""
    removed = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for p in folder.iterdir():
        if not p.name.startswith(prefix) or ".tmp-" not in p.name:
            continue
        if marked and (p.is_symlink() or not p.is_dir() or not (p / STAGING_MARKER).is_file()):
            continue
        m = _STAGING.search(p.name)
        if m is None:  # staging of an older prunekit (no PID in the name): stale after a day
            try:
                if now - p.lstat().st_mtime < LEGACY_STAGING_AGE_S:
                    continue
            except OSError:
                continue
        elif _alive(int(m.group(1))):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def discard(path: Path) -> None:
    """Move a bad entry out of the way (atomic rename), then delete it."""
    if not (path.exists() or path.is_symlink()):
        return
    import uuid
    trash = path.with_name(f".{path.name}{staging_tag()}{uuid.uuid4().hex[:12]}-discard")  # never a name planted in advance
    try:
        os.replace(path, trash)
    except OSError:
        trash = path
    if trash.is_dir() and not trash.is_symlink():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- directories

def _payload(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.name != MANIFEST and not p.name.startswith("."))


def seal_dir(d: Path, identity: dict) -> None:
    """Write the manifest of directory ``d``: its identity and every file's size and SHA-256."""
    files = {p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)} for p in _payload(d)}
    man = {"manifest_version": MANIFEST_VERSION, "identity": identity, "files": files}
    from prunekit.utils import atomic_write_text
    atomic_write_text(d / MANIFEST, json.dumps(man, indent=1, sort_keys=True), "cache manifest ")


def read_manifest(d: Path) -> dict | None:
    try:
        man = json.loads((d / MANIFEST).read_text())
        return man if isinstance(man, dict) else None
    except (OSError, ValueError):
        return None


def verify_dir(d: Path, identity: dict) -> str | None:
    """None when directory ``d`` is intact and stands for ``identity``; else why not."""
    if not d.is_dir() or d.is_symlink() and not d.resolve().is_dir():
        return "missing"
    man = read_manifest(d)
    if man is None:
        return "no readable manifest"
    if man.get("manifest_version") != MANIFEST_VERSION or not isinstance(man.get("files"), dict):
        return "manifest of an older prunekit (no file hashes)"
    if man.get("identity") != identity:
        return f"it stands for {man.get('identity')}, not {identity}"
    files = man["files"]
    extra = sorted({p.name for p in _payload(d)} - set(files))
    if extra:
        return f"unexpected file {extra[0]}"
    for name, info in sorted(files.items()):
        p = d / name
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().st_size != info.get("size"):
            return f"{name} is truncated or resized ({p.stat().st_size} bytes, manifest {info.get('size')})"
        if file_sha256(p) != info.get("sha256"):
            return f"{name} does not match its hash"
    return None


def usable_dir(d: Path, identity: dict, adopt=None) -> bool:
    """True when ``d`` verifies. A bad entry is reported and discarded (the caller rebuilds it).
    ``adopt(manifest) -> bool``: accept an older entry without file hashes and seal it now."""
    if not (d.exists() or d.is_symlink()):
        return False
    why = verify_dir(d, identity)
    if why is None:
        return True
    man = read_manifest(d)
    if adopt is not None and man is not None and "files" not in man and adopt(man):
        seal_dir(d, identity)
        return True
    warn(f"cache entry {d} rejected ({why}); rebuilding it")
    discard(d)
    return False


# ----------------------------------------------------------------------------- token arrays

def _arrays_sha(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_arrays(path: Path, arrays: dict[str, np.ndarray], identity: dict) -> None:
    """npz with a ``manifest`` entry (identity + content hash), written by the one writer; a
    failed write is a warning (the caller keeps its arrays)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        warn(f"cannot write cache entry {path} ({e.strerror or e}); going on without caching it")
        return
    man = json.dumps({"identity": identity, "sha256": _arrays_sha(arrays)}, sort_keys=True)
    from prunekit.errors import PrunekitError
    from prunekit.utils import atomic_write_with
    try:
        atomic_write_with(path, lambda f: np.savez(f, manifest=np.array(man), **arrays), "cache entry ")
    except OSError as e:  # disk full, file-size limit: the run goes on with the arrays in memory
        warn(f"cannot write cache entry {path} ({e.strerror or e}); going on without caching it")
    except PrunekitError as e:  # a symlink, FIFO or directory at the entry's name: never written through
        warn(f"{e}; going on without caching it")


def load_arrays(path: Path, identity: dict) -> dict[str, np.ndarray] | None:
    """The arrays of a verified entry, or None (a bad entry is reported and deleted)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        man = json.loads(str(arrays.pop("manifest"))) if "manifest" in arrays else None
        if man is None:
            why = "no manifest (written by an older prunekit)"
        elif man.get("identity") != identity:
            why = f"it stands for {man.get('identity')}, not {identity}"
        elif man.get("sha256") != _arrays_sha(arrays):
            why = "content does not match its hash"
        else:
            return arrays
    except Exception as e:  # zip/npz/JSON errors of a truncated or foreign file
        why = f"unreadable: {type(e).__name__}"
    warn(f"cache entry {path} rejected ({why}); rebuilding it")
    discard(path)
    return None
