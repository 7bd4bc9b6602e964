"""Saving: a model (or an offloaded runtime, block by block) written as a HF directory, atomically.

Everything is written to a staging directory next to the target and renamed into place, so a crash
never leaves a half-written model directory.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from prunekit.core import cache
from prunekit.core.runtime import Runtime
from prunekit.errors import PrunekitError
from prunekit.portable import make_portable
from prunekit.utils import publish_modes


def save_dir(model, tok, target: Path, meta: dict | None = None, extra_files: dict | None = None) -> Path:
    """Write model + tokenizer (+ prunekit.json, + ``extra_files`` {name: text}) to a staging
    directory, then rename into place: a crash never leaves a half-written model directory."""
    target.parent.mkdir(parents=True, exist_ok=True)
    cache.clean_staging(target.parent, f".{target.name}.tmp-", marked=True)  # left by a killed earlier save
    tmp = cache.make_staging_dir(target.parent, target.name)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        make_portable(tmp)  # readable by transformers 4.x too (prunekit/portable.py)
        publish_modes(tmp)  # mkdtemp/safetensors give 0700/0600
        if meta is not None:
            cache.seal_dir(tmp, meta)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        _publish(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target



def _publish(tmp: Path, target: Path) -> None:
    """Rename the finished staging directory onto ``target`` (absent, or an empty real directory;
    never through a symlink), its staging marker removed first."""
    (tmp / cache.STAGING_MARKER).unlink(missing_ok=True)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise PrunekitError(f"--save-model target {target} is not a directory; refusing to replace it")
    if target.exists():
        if any(target.iterdir()):
            raise PrunekitError(f"--save-model target {target} exists and is not empty; choose a new directory")
        target.rmdir()
    os.replace(tmp, target)


SAVE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def save_model(rt, out_dir: str | Path, dtype: str | None = None, meta: dict | None = None,
               extra_files: dict | None = None) -> Path:
    """Write the runtime's model and tokenizer as a HF directory (safetensors) atomically;
    ``load_model`` reads it back.

    ``dtype`` (fp32 | bf16 | fp16, default: the model's) is the stored precision: a cast copy is
    saved, the in-memory model is untouched (zeros stay zeros in every dtype, so the sparsity
    pattern survives). The saved config has ``use_cache`` on (calibration turns it off, generation
    wants it). Files get the usual modes (0644 / 0755 under umask 022)."""
    import copy
    rt = Runtime.of(rt)
    model, tokenizer = rt.model, rt.tokenizer
    if tokenizer is None:
        raise PrunekitError("save_model needs the runtime's tokenizer (load_model gives one)")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise PrunekitError(f"--save-model target {out} exists and is not empty; choose a new directory")
    if dtype is not None and dtype not in SAVE_DTYPES:
        raise PrunekitError(f"unknown save dtype '{dtype}'; choose from {', '.join(SAVE_DTYPES)}")
    off = rt.offloader
    if off is not None and off.needs_moving:  # never whole in memory: block by block
        return _save_offloaded(rt, out, dtype, {"saved_by": "prunekit", **(meta or {})}, extra_files)
    to_save = model
    if dtype is not None and next(model.parameters()).dtype != SAVE_DTYPES[dtype]:
        to_save = copy.deepcopy(model).to(SAVE_DTYPES[dtype])
    use_cache = to_save.config.use_cache
    to_save.config.use_cache = True
    try:
        return save_dir(to_save, tokenizer, out, {"saved_by": "prunekit", **(meta or {})}, extra_files)
    finally:
        to_save.config.use_cache = use_cache


def _save_offloaded(rt: Runtime, target: Path, dtype: str | None = None, meta: dict | None = None,
                    extra_files: dict | None = None) -> Path:
    """Sharded safetensors, one block at a time (an offloaded model is never whole in memory);
    staged and renamed into place like ``save_dir``; ``dtype`` casts each tensor as it is written."""
    from safetensors.torch import save_file
    model, tok = rt.model, rt.tokenizer
    target.parent.mkdir(parents=True, exist_ok=True)
    cache.clean_staging(target.parent, f".{target.name}.tmp-", marked=True)
    tmp = cache.make_staging_dir(target.parent, target.name)
    prefix, lay = rt.prefix, rt.layout
    weight_map = {}

    def write(fname, tensors):
        keep, seen = {}, set()  # per shard: freed blocks' addresses are reused later
        for k, v in tensors.items():  # tied weights are stored once (HF drops the tied copy)
            if v.device.type == "meta" or (v.data_ptr(), v.shape) in seen:
                continue
            seen.add((v.data_ptr(), v.shape))
            v = v.detach().to("cpu")
            if dtype is not None and v.is_floating_point():
                v = v.to(SAVE_DTYPES[dtype])
            keep[k] = v.contiguous()
        save_file(keep, str(tmp / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in keep})

    try:
        write("model-rest.safetensors", {k: v for k, v in model.state_dict().items() if not k.startswith(prefix)})
        for i in range(lay.num_blocks):
            with rt.onload(i):
                write(f"model-block{i:04d}.safetensors",
                      {f"{prefix}{i}.{k}": v for k, v in lay.blocks[i].state_dict().items()})
        (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        use_cache = model.config.use_cache
        model.config.use_cache = True  # calibration turned it off; generation wants it
        try:
            model.config.save_pretrained(tmp)
        finally:
            model.config.use_cache = use_cache
        tok.save_pretrained(tmp)
        make_portable(tmp)  # readable by transformers 4.x too (prunekit/portable.py)
        if meta is not None:
            (tmp / "prunekit.json").write_text(json.dumps(meta))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        publish_modes(tmp)
        _publish(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
