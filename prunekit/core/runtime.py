"""The runtime: one loaded model and everything the engine knows about it, passed explicitly.

    rt = load_model("smollm2-135m", offload="disk")     # a Runtime
    rt.model, rt.tokenizer, rt.layout                    # the transformers objects and their blocks
    with rt.onload(3, write=True): ...                   # block 3 on its execution device, writable
    with weight_snapshot(rt) as snap: ...                # dense weights back on exit

A ``Runtime`` carries the model with its ``layout``, its ``offloader`` (where block weights live
between uses, ``core.offload``), the activation ``memory_policy``, the active weight snapshots and
the set of blocks modified since they were dense, and its provenance (name, origin, fingerprint).
Nothing is stored on the transformers model and no module keeps state about loaded models: two
runtimes never share state, and every engine, solver, allocation and experiment function receives
the one it works on.

``Runtime.of(model)`` wraps a plain in-memory ``nn.Module`` (no offload) for the functions that
accept either; state that must outlive one call (a weight snapshot watching later writes) needs the
same Runtime object in every call, so ``weight_snapshot`` refuses a bare model.
"""
from __future__ import annotations

import hashlib
import shutil
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.core.architectures import Layout, block_prefix, layout
from prunekit.core.cache import cache_dir
from prunekit.core.devices import precision_name
from prunekit.core.offload import DEFAULT_POLICY, MemoryPolicy, Offloader, check_mode, make_work_dir
from prunekit.errors import PrunekitError


@dataclass(eq=False)
class Runtime:
    model: nn.Module
    tokenizer: Any = None
    name: str = ""
    offloader: Offloader | None = None
    memory: MemoryPolicy | None = None     # None: the offload mode's default (DEFAULT_POLICY)
    origin: str = ""
    eval_dtype: torch.dtype | None = None  # evaluation compute dtype under autocast; None: the weights'
    snapshots: list = field(default_factory=list, repr=False)   # active WeightSnapshots
    modified: set = field(default_factory=set, repr=False)      # blocks written since dense
    layout: Layout = field(init=False, repr=False)

    def __post_init__(self):
        if isinstance(self.model, Runtime):
            raise PrunekitError("Runtime wraps a transformers model, not another Runtime")
        self.layout = layout(self.model)  # fails early on an unsupported architecture

    @classmethod
    def of(cls, obj, tokenizer=None) -> "Runtime":
        """``obj`` itself when it is a Runtime, else a new Runtime around the in-memory model."""
        if isinstance(obj, Runtime):
            return obj
        if not isinstance(obj, nn.Module):
            raise PrunekitError(f"expected a prunekit Runtime or a transformers model, got {type(obj).__name__}")
        return cls(obj, tokenizer)

    # ---- what the model is
    @property
    def config(self):
        return self.model.config

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def precision(self) -> str:
        """'fp32', 'bf16', 'fp16', or 'mixed' (fp32 weights and calibration, half-precision evaluation)."""
        return precision_name(self.dtype, self.eval_dtype)

    def evaluating(self):
        """The context of an evaluation forward: ``torch.autocast`` to ``eval_dtype`` when it differs
        from the weights' dtype (mixed precision), else nothing. Calibration never enters it."""
        if self.eval_dtype is None or self.eval_dtype == self.dtype:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.eval_dtype)

    @property
    def num_blocks(self) -> int:
        return self.layout.num_blocks

    @property
    def prefix(self) -> str:
        return block_prefix(self.model)

    # ---- where it computes and keeps things
    @property
    def offload_mode(self) -> str:
        return self.offloader.mode if self.offloader is not None else "none"

    @property
    def device(self) -> torch.device:
        """Where the embeddings, the head and the block being worked on compute."""
        if self.offloader is not None:
            return self.offloader.device
        emb = self.model.get_input_embeddings() if hasattr(self.model, "get_input_embeddings") else None
        return emb.weight.device if emb is not None else next(self.model.parameters()).device

    @property
    def memory_policy(self) -> MemoryPolicy:
        return self.memory if self.memory is not None else DEFAULT_POLICY[self.offload_mode]

    def set_memory_policy(self, activations: str | None = None, checkpoint_every: int | None = None) -> MemoryPolicy:
        """Override where boundary activations live and how often replays keep one."""
        cur = self.memory_policy
        self.memory = MemoryPolicy(activations or cur.activations, int(checkpoint_every or cur.checkpoint_every))
        return self.memory

    @property
    def activation_device(self) -> torch.device:
        return torch.device("cpu") if self.memory_policy.activations == "cpu" else self.device

    @contextmanager
    def onload(self, i: int, write: bool = False):
        """Block ``i``'s weights on its execution device for the duration (a no-op without offload).
        ``write=True``: active snapshots copy the block first, and changes are written back to the
        block's home on the last release."""
        if write:
            for snap in list(self.snapshots):
                snap.save(i)
            self.modified.add(i)
        if self.offloader is None:
            yield
            return
        self.offloader.acquire(i, write)
        try:
            yield
        finally:
            self.offloader.release(i)

    @torch.no_grad()
    def offload(self, mode: str, device=None, work_root: Path | None = None) -> Offloader | None:
        """Offload the blocks of this in-memory model: 'cpu' keeps them in CPU RAM, 'disk' writes each
        block once to a private directory under ``$PRUNEKIT_CACHE/offload`` and frees it."""
        check_mode(mode)
        if mode == "auto":
            raise PrunekitError("offload needs an explicit mode (none, cpu, disk)")
        if self.offloader is not None:
            raise PrunekitError("model is already offloaded")
        if mode == "none":
            return None
        dev = torch.device(device) if device is not None else self.device
        if mode == "cpu":
            self.offloader = Offloader(self.layout.blocks, self.prefix, "cpu", dev)
            return self.offloader
        work = make_work_dir((work_root or cache_dir()) / "offload")
        off = self.offloader = Offloader(self.layout.blocks, self.prefix, "disk", dev, {}, work)
        for i in range(self.num_blocks):  # the block is resident now: mark it held and dirty, then release
            off.refs[i], off.dirty[i] = 1, True
            off.release(i)
        return off

    def close(self) -> None:
        """Remove the offload hooks and delete the offload work directory (the model is unusable after
        a disk offload; an in-memory model is left as it is)."""
        off, self.offloader = self.offloader, None
        if off is not None:
            off.remove()
            if off.work_dir is not None:
                shutil.rmtree(off.work_dir, ignore_errors=True)

    # ---- identity
    def fingerprint(self, digests: list | None = None) -> str:
        """Cheap identity of the weights: config + name + a strided sample of every block linear.
        Keys the statistics cache; changes when weights are pruned or replaced. ``digests`` (a
        list) receives one hash per block, for ``block_digest`` checks."""
        h = hashlib.sha256(self.config.to_json_string(use_diff=False).encode())
        h.update(str(self.name).encode())
        for i in range(self.num_blocks):
            with self.onload(i):
                bd = self.block_digest(i, into=h)
            if digests is not None:
                digests.append(bd)
        return h.hexdigest()[:20]

    def block_digest(self, i: int, into=None) -> str:
        """Hash of block i's strided weight samples (the block must be onloaded)."""
        bh = hashlib.sha256()
        for n, m in self.layout.linears(i).items():
            sample = _sample(m.weight)
            for x in (bh,) if into is None else (bh, into):
                x.update(n.encode())
                x.update(sample.tobytes())
        return bh.hexdigest()

    def provenance(self) -> dict:
        """What a record says of this model (reports, model cards)."""
        return {"id": self.name, "fingerprint": self.fingerprint(), "origin": self.origin,
                "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
                "precision": self.precision}


def _sample(w: torch.Tensor):
    w = w.detach().reshape(-1)
    return w[:: max(1, w.numel() // 4096)].float().cpu().numpy()
