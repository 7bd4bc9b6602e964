"""The one weight snapshot: dense block weights saved lazily, restored on exit (also on an exception).

    with weight_snapshot(rt) as snap:      # rt: the model's Runtime; nothing is copied yet
        prune_model(rt, ids, 0.5)          # each block is copied the first time it is modified
        ...
        snap.restore()                     # dense again (the snapshot stays active)
    # leaving the block restores every modified block, also when an exception escapes

A block is saved by ``snap.save(i)`` — called automatically by every writer that declares its writes
(``rt.onload(i, write=True)``: the sequential engine when it prunes, ``snap.modify(i)``)
while the snapshot is active. ``store``: where the saved copies live — ``cpu`` (RAM), ``disk``
(safetensors under ``$PRUNEKIT_CACHE/offload``), ``device`` (the block's own device; fastest swap),
or ``auto``: with disk offload the block's unmodified checkpoint file itself (no copy at all), else
cpu. Only the decoder-block linear weights are saved (the solvers modify nothing else).
"""
from __future__ import annotations

import shutil
import weakref
from contextlib import contextmanager
from pathlib import Path

import torch

from prunekit.core.cache import cache_dir
from prunekit.core.offload import make_work_dir
from prunekit.core.runtime import Runtime
from prunekit.errors import PrunekitError

STORES = ("auto", "cpu", "disk", "device")


class WeightSnapshot:
    def __init__(self, rt: Runtime, store: str = "auto"):
        if store not in STORES:
            raise PrunekitError(f"unknown snapshot store '{store}'; use one of {', '.join(STORES)}")
        if not isinstance(rt, Runtime):  # it must see every later write: those go through this runtime
            raise PrunekitError("weight_snapshot needs the model's Runtime (load_model returns one; "
                                "Runtime.of(model) wraps an in-memory model), not a bare model")
        self.rt, self.lay = rt, rt.layout
        off = rt.offloader
        if store == "auto":
            store = "sources" if off is not None and off.mode == "disk" else "cpu"
        self.store = store
        self.saved: dict[int, object] = {}
        self.active = False
        self._dir: Path | None = None

    # ---- lifecycle
    def __enter__(self) -> "WeightSnapshot":
        if self not in self.rt.snapshots:
            self.rt.snapshots.append(self)
        self.active = True
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.restore()
        finally:
            self.close()

    def close(self) -> None:
        """Stop watching the model and drop the saved copies (without restoring)."""
        if self in self.rt.snapshots:
            self.rt.snapshots.remove(self)
        self.active = False
        self._drop(list(self.saved))
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    @property
    def modified(self) -> list[int]:
        """Blocks saved (hence possibly modified) since the last restore."""
        return sorted(self.saved)

    # ---- save / restore
    @torch.no_grad()
    def save(self, i: int) -> None:
        """Copy block i's current linear weights, unless already saved since the last restore."""
        if i in self.saved:
            return
        off = self.rt.offloader
        dense = i not in self.rt.modified
        if dense:  # nested snapshots share one immutable dense copy instead of copying again
            for other in self.rt.snapshots:
                if other is not self and i in other.saved and other.saved[i][2] and other.saved[i][0] != "file":
                    kind, data, _ = other.saved[i]
                    if kind == "sources":
                        off.pin({f for f, _ in data.values()}, +1)
                    self.saved[i] = (kind, data, True)
                    return
        if self.store == "sources":
            if off is None or off.refs[i] > 0 and off.dirty[i]:
                # an onloaded block already being written: its source is stale, copy it instead
                self.saved[i] = (*self._copy(i, "cpu"), dense)
            else:
                src = off.block_sources(i)
                off.pin({f for f, _ in src.values()}, +1)
                self.saved[i] = ("sources", src, dense)
            return
        self.saved[i] = (*self._copy(i, self.store), dense)

    def _copy(self, i: int, store: str):
        with self.rt.onload(i):
            ws = {n: m.weight.detach() for n, m in self.lay.linears(i).items()}
            if store == "device":
                return ("mem", {n: w.clone() for n, w in ws.items()})
            if store == "cpu":
                return ("mem", {n: w.to("cpu", copy=True) for n, w in ws.items()})
            from prunekit.utils import atomic_write_with, write_safetensors
            if self._dir is None:
                self._dir = make_work_dir(cache_dir() / "offload")
                self._fin = weakref.finalize(self, shutil.rmtree, str(self._dir), True)
            path = self._dir / f"snap-block{i:04d}.safetensors"
            atomic_write_with(path, lambda f: write_safetensors(f, ws), "snapshot file ")
            return ("file", str(path))

    @torch.no_grad()
    def restore(self, blocks=None, keep: bool = False) -> None:
        """Put the saved weights of ``blocks`` (default: all saved) back; they may be modified
        (and saved) again afterwards. ``keep``: keep the saved copies (a block swapped back and
        forth is copied once)."""
        todo = sorted(self.saved) if blocks is None else [b for b in blocks if b in self.saved]
        for i in todo:
            kind, data, dense = self.saved[i]
            off = self.rt.offloader
            if kind == "sources" and off.refs[i] == 0:
                off.dirty[i] = False
                off.set_block_sources(i, data)
            else:
                self._write_back(i, kind, data)
            self.rt.modified.discard(i) if dense else self.rt.modified.add(i)
        if not keep:
            self._drop(todo)

    def dense_weight(self, i: int, name: str, device=None) -> torch.Tensor | None:
        """The saved dense weight of block i's linear ``name`` (None when block i is not saved)."""
        if i not in self.saved:
            return None
        kind, data, _ = self.saved[i]
        if kind == "mem":
            t = data[name]
        else:
            f, key = (data[f"{name}.weight"] if kind == "sources" else (data, name))
            from safetensors import safe_open
            with safe_open(f, framework="pt") as h:
                t = h.get_tensor(key)
        return t.to(device) if device is not None else t

    def _write_back(self, i: int, kind: str, data) -> None:
        # snapshot observers must not re-save the block while it is written back
        snaps, self.rt.snapshots = self.rt.snapshots, []
        try:
            with self.rt.onload(i, write=True):
                for n, m in self.lay.linears(i).items():
                    m.weight.data.copy_(self.dense_weight(i, n, m.weight.device))
        finally:
            self.rt.snapshots = snaps

    def _drop(self, blocks) -> None:
        off = self.rt.offloader
        for i in blocks:
            kind, data, _ = self.saved.pop(i)
            if kind == "sources":
                off.pin({f for f, _ in data.values()}, -1)
            elif kind == "file":
                Path(data).unlink(missing_ok=True)

    @contextmanager
    def modify(self, i: int):
        """Block i onloaded for writing (saved first); its changes persist until ``restore``."""
        if not self.active:
            raise PrunekitError("weight snapshot is not active; use it as `with weight_snapshot(model) as snap:`")
        with self.rt.onload(i, write=True):
            yield self.lay.blocks[i]


def weight_snapshot(rt: Runtime, store: str = "auto") -> WeightSnapshot:
    """A ``WeightSnapshot`` of the runtime's model to use as a context manager (module docstring)."""
    return WeightSnapshot(rt, store)
