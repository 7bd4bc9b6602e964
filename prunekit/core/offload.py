"""Offload: where each decoder block's weights live between uses, and the activation memory policy.

Modes (``load_model(..., offload=...)``, or ``Runtime.offload(mode)`` for a model built in memory):

- ``none``: the whole model on the execution device.
- ``cpu``: embeddings, final norm and head on the execution device; block weights in CPU RAM
  (pinned when the device is CUDA), copied to the device while that block is worked on. On a CPU
  execution device this is the same as ``none``.
- ``disk``: block weights stay in safetensors files (the model's own checkpoint, memory-mapped by
  safetensors on read; a block that was modified is rewritten once to a private directory under
  ``$PRUNEKIT_CACHE/offload``); a block is read when it is worked on and dropped afterwards, so a
  model larger than RAM passes through.
- ``auto`` (default): ``none`` when model + calibration activations + 30 % headroom fit on the
  execution device, else ``cpu`` when they fit in CPU RAM, else ``disk``.

A block is *onloaded* with ``Runtime.onload(i, write=...)`` (``core.runtime``) (reference counted; the engine holds it
while running every batch through the block, forward hooks hold it during a plain ``model(x)``
forward such as perplexity evaluation) and written back to its home on the last release when a
holder declared ``write=True``.

``MemoryPolicy`` says where block-boundary activations live (``activations``: 'device' or 'cpu';
calibration batches move to the device one at a time) and how often replays keep a boundary
(``checkpoint_every`` k: the others are recomputed from the nearest kept one). Defaults per mode:
none → (device, 1), cpu → (cpu, 1), disk → (cpu, 4).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.vocabulary import OFFLOAD_MODES

HEADROOM = 1.3  # `auto`: model + activations need 30 % headroom on the device


@dataclass(frozen=True)
class MemoryPolicy:
    activations: str = "device"   # where block-boundary activations live: 'device' | 'cpu'
    checkpoint_every: int = 1     # replays keep every k-th block boundary and recompute the rest

    def __post_init__(self):
        if self.activations not in ("device", "cpu"):
            raise PrunekitError(f"unknown activation placement '{self.activations}'; use device or cpu")
        if int(self.checkpoint_every) < 1:
            raise PrunekitError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")


DEFAULT_POLICY = {"none": MemoryPolicy("device", 1), "cpu": MemoryPolicy("cpu", 1),
                  "disk": MemoryPolicy("cpu", 4)}


def check_mode(mode: str) -> str:
    if mode not in OFFLOAD_MODES:
        raise PrunekitError(f"unknown offload mode '{mode}'; use one of {', '.join(OFFLOAD_MODES)}")
    return mode


def block_device(block: nn.Module) -> torch.device:
    for p in block.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def _tensors(block: nn.Module):
    """(module, attribute name, is_param) for every parameter and persistent buffer of ``block``."""
    out = []
    for mname, mod in block.named_modules():
        for n, p in mod._parameters.items():
            if p is not None:
                out.append((f"{mname}.{n}" if mname else n, mod, n, True))
        for n, b in mod._buffers.items():
            if b is not None and n not in mod._non_persistent_buffers_set:
                out.append((f"{mname}.{n}" if mname else n, mod, n, False))
    return out


def _set(mod: nn.Module, name: str, t: torch.Tensor, is_param: bool) -> None:
    if is_param:
        mod._parameters[name] = nn.Parameter(t, requires_grad=False)
    else:
        mod._buffers[name] = t


class Offloader:
    """Block homes and reference-counted onloading (see module docstring)."""

    def __init__(self, blocks: nn.ModuleList, prefix: str, mode: str, device: torch.device,
                 sources: dict[str, tuple[str, str]] | None = None, work_dir: Path | None = None):
        self.mode, self.device, self.prefix = mode, torch.device(device), prefix
        self.blocks = blocks
        self.refs = [0] * len(blocks)
        self.dirty = [False] * len(blocks)
        self.entries = [_tensors(b) for b in blocks]
        self.sources = sources or {}      # disk: full key -> (file, key in file)
        self.work_dir = work_dir
        self.reads = self.writes = 0      # block loads / write-backs (cost accounting)
        self.pinned: dict[str, int] = {}  # work files a snapshot still refers to
        self.cpu_home: list[dict[str, torch.Tensor]] = []
        if mode == "cpu":
            pin = self.device.type == "cuda"
            for i, ents in enumerate(self.entries):
                home = {}
                for key, mod, n, isp in ents:
                    t = (mod._parameters if isp else mod._buffers)[n].detach()
                    t = t.to("cpu")
                    if pin:
                        t = t.pin_memory()
                    home[key] = t
                    _set(mod, n, t, isp)
                self.cpu_home.append(home)
        self.handles = []
        if self.needs_moving:
            for i, b in enumerate(blocks):
                self.handles.append(b.register_forward_pre_hook(self._pre_hook(i)))
                self.handles.append(b.register_forward_hook(self._post_hook(i)))
        if work_dir is not None:
            self._finalizer = weakref.finalize(self, shutil.rmtree, str(work_dir), True)

    @property
    def needs_moving(self) -> bool:
        return self.mode == "disk" or (self.mode == "cpu" and self.device.type != "cpu")

    def _pre_hook(self, i):
        def hook(mod, args):
            self.acquire(i, False)
        return hook

    def _post_hook(self, i):
        def hook(mod, args, out):
            self.release(i)
        return hook

    # ---- onload / release
    @torch.no_grad()
    def acquire(self, i: int, write: bool = False) -> None:
        self.dirty[i] |= bool(write)
        self.refs[i] += 1
        if self.refs[i] > 1 or not self.needs_moving:
            return
        self.reads += 1
        if self.mode == "cpu":
            for key, mod, n, isp in self.entries[i]:
                _set(mod, n, self.cpu_home[i][key].to(self.device, non_blocking=True), isp)
            return
        from safetensors import safe_open
        by_file: dict[str, list] = {}
        for ent in self.entries[i]:
            by_file.setdefault(self.sources[f"{self.prefix}{i}.{ent[0]}"][0], []).append(ent)
        for fname, ents in by_file.items():
            with safe_open(fname, framework="pt", device="cpu") as f:
                for key, mod, n, isp in ents:
                    cur = (mod._parameters if isp else mod._buffers)[n]
                    t = f.get_tensor(self.sources[f"{self.prefix}{i}.{key}"][1])
                    _set(mod, n, t.to(device=self.device, dtype=cur.dtype), isp)

    @torch.no_grad()
    def release(self, i: int) -> None:
        self.refs[i] -= 1
        if self.refs[i] > 0:
            return
        if not self.needs_moving:
            self.dirty[i] = False
            return
        if self.mode == "cpu":
            for key, mod, n, isp in self.entries[i]:
                cur = (mod._parameters if isp else mod._buffers)[n]
                if self.dirty[i]:
                    self.cpu_home[i][key].copy_(cur)
                _set(mod, n, self.cpu_home[i][key], isp)
        else:
            if self.dirty[i]:
                self._write_block(i)
            for key, mod, n, isp in self.entries[i]:
                cur = (mod._parameters if isp else mod._buffers)[n]
                _set(mod, n, torch.empty(cur.shape, dtype=cur.dtype, device="meta"), isp)
        self.dirty[i] = False

    def _write_block(self, i: int) -> None:
        """Write block i's current weights to the private offload directory (the one writer:
        atomic, never through a symlink) and point its sources there."""
        from prunekit.utils import atomic_write_with, write_safetensors
        self.writes += 1
        tensors = {key: (mod._parameters if isp else mod._buffers)[n].detach().to("cpu").contiguous()
                   for key, mod, n, isp in self.entries[i]}
        path = self.work_dir / f"block{i:04d}-{self.writes}.safetensors"  # new name: snapshots may hold the old
        atomic_write_with(path, lambda f: write_safetensors(f, tensors), "offload file ")
        old = {self.sources[f"{self.prefix}{i}.{key}"][0] for key in tensors if f"{self.prefix}{i}.{key}" in self.sources}
        for key in tensors:
            self.sources[f"{self.prefix}{i}.{key}"] = (str(path), key)
        for f in old:
            self.drop_file(f)

    def block_sources(self, i: int) -> dict[str, tuple[str, str]]:
        return {key: self.sources[f"{self.prefix}{i}.{key}"] for key, *_ in self.entries[i]}

    def set_block_sources(self, i: int, src: dict[str, tuple[str, str]]) -> None:
        """Point block i back at ``src`` (a snapshot restoring a disk-offloaded block: no copy)."""
        old = {f for f, _ in self.block_sources(i).values()}
        for key, v in src.items():
            self.sources[f"{self.prefix}{i}.{key}"] = v
        for f in old:
            self.drop_file(f)

    def pin(self, files, delta: int) -> None:
        for f in files:
            self.pinned[f] = self.pinned.get(f, 0) + delta
            if self.pinned[f] <= 0:
                self.pinned.pop(f)
                self.drop_file(f)

    def drop_file(self, f: str) -> None:
        """Delete a work file nobody refers to (never the model's own checkpoint)."""
        if self.work_dir is None or Path(f).parent != self.work_dir or f in self.pinned:
            return
        if any(v[0] == f for v in self.sources.values()):
            return
        Path(f).unlink(missing_ok=True)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


# ----------------------------------------------------------------------------- set-up

OWNER_FILE = ".prunekit-offload"  # in every work directory: the PID of the run that owns it
_WORK_DIR = re.compile(r"run-(\d+)-[0-9a-f]{6}-")


def clean_work_dirs(root: Path) -> list[Path]:
    """Remove the offload work directories under ``root`` whose run is gone (killed): only a real
    directory named ``run-<pid>-...`` holding an owner file with that same PID, the PID no longer
    alive. Anything else under ``root`` is left alone."""
    from prunekit.core.cache import _alive
    removed = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for d in entries:
        m = _WORK_DIR.match(d.name)
        if m is None or d.is_symlink() or not d.is_dir():
            continue
        try:
            owner = (d / OWNER_FILE).read_text().strip() if (d / OWNER_FILE).is_file() else None
        except OSError:
            continue
        if owner != m.group(1) or _alive(int(owner)):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def make_work_dir(root: Path) -> Path:
    """A private, writable offload directory under ``root`` (marked with this run's PID; the work
    directories of dead runs are removed first); one-line error when not writable."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        clean_work_dirs(root)
        d = Path(tempfile.mkdtemp(dir=root, prefix=f"run-{os.getpid()}-{uuid.uuid4().hex[:6]}-"))
        (d / OWNER_FILE).write_text(str(os.getpid()))
        return d
    except OSError as e:
        raise PrunekitError(f"--offload disk needs a writable cache directory; {root} is not writable "
                            f"({e.strerror or e}); set PRUNEKIT_CACHE to a writable directory") from e


def estimate_auto(param_bytes: int, act_bytes: int, device: torch.device) -> str:
    """The `auto` rule: none if model + activations + 30 % fit on the device, else cpu if they fit
    in CPU RAM, else disk."""
    need = (param_bytes + act_bytes) * HEADROOM
    if need <= free_bytes(device):
        return "none"
    if device.type != "cpu" and need <= free_bytes(torch.device("cpu")):
        return "cpu"
    return "disk"


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        if device.index is None and torch.cuda.device_count() > 1:  # spread over every GPU
            return sum(int(torch.cuda.mem_get_info(k)[0]) for k in range(torch.cuda.device_count()))
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    return 1 << 62


def checkpoint_sources(loc: Path) -> dict[str, tuple[str, str]]:
    """Tensor name -> (safetensors file, name) of a HF directory (single file or sharded index)."""
    loc = Path(loc)
    idx = loc / "model.safetensors.index.json"
    if idx.is_file():
        wm = json.loads(idx.read_text())["weight_map"]
        return {k: (str(loc / f), k) for k, f in wm.items()}
    single = loc / "model.safetensors"
    if not single.is_file():
        raise PrunekitError(f"--offload disk needs safetensors weights; {loc} has none")
    from safetensors import safe_open
    with safe_open(str(single), framework="pt") as f:
        return {k: (str(single), k) for k in f.keys()}
