"""Throw-away virtual environments for the tests that need another set of packages (Colab's
versions, a non-editable install, transformers 4.x). Each is built once into
``$PRUNEKIT_CACHE/venvs/<name>-<key>``, the key a digest of its requirement steps, so later runs
reuse it (a ``.complete`` marker: an interrupted build is redone, a failed one removed). torch is always installed first and pinned
(the local CPU wheel): a range could pull a multi-GB CUDA build."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

TORCH = "torch==2.13.0"


def cache_root() -> Path:
    return Path(os.environ.get("PRUNEKIT_CACHE") or Path.home() / ".cache" / "prunekit") / "venvs"


def pip(python: Path, *args: str, timeout: int = 900) -> None:
    r = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode:
        raise RuntimeError(f"pip install {' '.join(args)} failed:\n{r.stderr[-3000:]}")


def cached_venv(name: str, steps: list[list[str]], key_extra: str = "") -> Path:
    """The python of a venv where each of ``steps`` (pip install argument lists, after torch) ran
    in order; built on first use. ``key_extra``: further text the venv depends on (a constraints
    file's content)."""
    key = hashlib.sha256(json.dumps([sys.version_info[:2], TORCH, steps, key_extra]).encode()).hexdigest()[:12]
    root = cache_root() / f"{name}-{key}"
    py = root / "bin" / "python"
    if (root / ".complete").exists():
        return py
    shutil.rmtree(root, ignore_errors=True)  # an unfinished earlier build
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        venv.EnvBuilder(with_pip=True).create(root)
        pip(py, TORCH)
        for step in steps:
            pip(py, *step)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    (root / ".complete").touch()  # only a finished build is reused
    return py


def overlay_venv(base_python: Path, target: Path) -> Path:
    """A fresh venv at ``target`` that also sees ``base_python``'s packages (a ``.pth`` line), the
    way Colab's kernel sees its preinstalled dist-packages: pip installs into the overlay and never
    touches the base, so the cached base stays pristine. ~5 s."""
    site = subprocess.run([str(base_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    venv.EnvBuilder(with_pip=True).create(target)
    py = target / "bin" / "python"
    own = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    (Path(own) / "_preinstalled.pth").write_text(site + "\n")
    # ensurepip's old setuptools would shadow the base's (as if Colab shipped a stale one)
    subprocess.run([str(py), "-m", "pip", "uninstall", "-q", "-y", "setuptools"], capture_output=True, check=True)
    return py
