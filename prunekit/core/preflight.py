"""Preflight: what a model argument stands for, read cheaply before any weights load.

``peek_model(name)`` answers "is this loadable, and how many decoder blocks does it have?" from
config files and file headers only (no tensors, no dequantisation), so the CLI can reject bad
input — unknown ``model_type``, a truncated safetensors file, a pickle-only directory, an SV-NUP
window larger than the model — in milliseconds instead of after a load. Every problem is a
one-line ``PrunekitError`` naming the input.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from prunekit.core.architectures import BLOCK_PATHS
from prunekit.errors import PrunekitError


@dataclass
class ModelInfo:
    name: str
    kind: str                      # alias | gguf | dir | hub
    location: str | None           # file or directory (None: hub id, or alias not built yet)
    model_type: str | None = None
    num_blocks: int | None = None
    max_positions: int | None = None
    widths: tuple[int, ...] = ()   # input widths of the block linears (N:M needs M to divide them)


def supported_types() -> set[str]:
    """Architectures ``core.architectures.layout`` knows."""
    return set(BLOCK_PATHS)


def config_info(cfg: dict) -> tuple[str | None, int | None, int | None]:
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}
    blocks = cfg.get("num_hidden_layers", text.get("num_hidden_layers"))
    pos = cfg.get("max_position_embeddings", text.get("max_position_embeddings"))
    return cfg.get("model_type"), blocks, pos


def widths(cfg: dict) -> tuple[int, ...]:
    c = {**(cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}), **cfg}
    w = [c.get(k) for k in ("hidden_size", "intermediate_size", "ffn_dim")]
    if isinstance(c.get("head_dim"), int) and isinstance(c.get("num_attention_heads"), int):
        w.append(c["head_dim"] * c["num_attention_heads"])
    return tuple(sorted({v for v in w if isinstance(v, int) and v > 0}))


def read_config(d: Path, name: str) -> dict:
    try:
        cfg = json.loads((d / "config.json").read_text())
    except FileNotFoundError:
        raise PrunekitError(f"model '{name}': {d} has no config.json; not a HF model directory") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise PrunekitError(f"model '{name}': {d / 'config.json'} is not valid JSON ({type(e).__name__})") from None
    if not isinstance(cfg, dict):
        raise PrunekitError(f"model '{name}': {d / 'config.json'} is not a JSON object")
    return cfg


def check_safetensors(path: Path, name: str) -> None:
    """Header of a safetensors file: 8-byte little-endian header length, a JSON header whose
    largest data offset must equal the payload size (a truncated or padded file fails here)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100 << 20:
                raise ValueError(f"header length {n} exceeds the file")
            header = json.loads(f.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end != size:
            raise ValueError(f"{size} bytes on disk, header describes {8 + n + end}")
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise PrunekitError(f"model '{name}': {path} is truncated or corrupt ({str(e).splitlines()[0]})") from None


def check_model_dir(d: Path, name: str) -> ModelInfo:
    cfg = read_config(d, name)
    mt, blocks, pos = config_info(cfg)
    if mt is None:
        raise PrunekitError(f"model '{name}': {d / 'config.json'} has no model_type")
    if mt not in supported_types():
        raise PrunekitError(f"model '{name}': unsupported model_type '{mt}'; supported: "
                            f"{', '.join(sorted(supported_types()))}")
    weights = sorted(d.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in d.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        if pickles:
            raise PrunekitError(f"model '{name}': {d} holds only pickle weights ({', '.join(pickles)}); prunekit "
                                "loads safetensors only (convert with save_pretrained(safe_serialization=True))")
        raise PrunekitError(f"model '{name}': {d} has no *.safetensors weights")
    index = d / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError):
            raise PrunekitError(f"model '{name}': {index} is not a valid safetensors index") from None
        missing = [s for s in shards if not (d / s).is_file()]
        if missing:
            raise PrunekitError(f"model '{name}': shard {missing[0]} named in {index.name} is missing")
        weights = [d / s for s in shards]
    for w in weights:
        check_safetensors(w, name)
    return ModelInfo(name, "dir", str(d), mt, blocks, pos, widths(cfg))


# ----------------------------------------------------------------------------- GGUF header

_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_header(path: Path, want=("general.architecture",),
                suffixes=(".block_count", ".context_length", ".embedding_length", ".feed_forward_length")) -> dict:
    """Scalar/string key-values of a GGUF header up to the keys wanted. gguf.GGUFReader parses every
    tensor descriptor too (8 s for SmolLM2 on a busy 2-core box); this reads only the KV section."""
    out: dict = {}
    with open(path, "rb") as f:
        def rd(fmt):
            b = f.read(struct.calcsize(fmt))
            if len(b) < struct.calcsize(fmt):
                raise ValueError("truncated header")
            return struct.unpack(fmt, b)[0]

        def rstr():
            n = rd("<Q")
            if n > 1 << 24:
                raise ValueError("bad string length")
            return f.read(n).decode("utf-8", "replace")

        def value(t):
            if t in _SCALAR:
                return rd(_SCALAR[t])
            if t == 8:
                return rstr()
            if t == 9:
                et, n = rd("<I"), rd("<Q")
                if et == 8:
                    for _ in range(n):
                        f.seek(rd("<Q"), 1)
                elif et in _SCALAR:
                    f.seek(n * struct.calcsize(_SCALAR[et]), 1)
                else:
                    raise ValueError(f"array of type {et}")
                return None
            raise ValueError(f"value type {t}")

        if f.read(4) != b"GGUF":
            raise ValueError("bad magic")
        version = rd("<I")
        if version < 2:
            raise ValueError(f"GGUF version {version}")
        rd("<Q")
        for _ in range(rd("<Q")):
            key = rstr()
            v = value(rd("<I"))
            if key in want or key.endswith(suffixes):
                out[key] = v
            arch = out.get("general.architecture")
            if arch and all(f"{arch}{s}" in out for s in suffixes):
                break
    return out


def gguf_info(path: Path, name: str) -> ModelInfo:
    try:
        h = gguf_header(path)
    except (OSError, ValueError, struct.error) as e:
        raise PrunekitError(f"model '{name}': {path} has an unreadable GGUF header ({e})") from None
    arch = h.get("general.architecture")
    widths = tuple(sorted({h[k] for k in (f"{arch}.embedding_length", f"{arch}.feed_forward_length") if k in h}))
    return ModelInfo(name, "gguf", str(path), arch, h.get(f"{arch}.block_count"), h.get(f"{arch}.context_length"),
                     widths)


def tokenizer_location(info: ModelInfo) -> Path | None:
    """A local directory holding the tokenizer ``info``'s model will load with, when one exists
    without building anything (a model directory; an alias or GGUF already dequantised into the
    cache); None otherwise."""
    from prunekit.core.cache import cache_dir
    dense = cache_dir() / "dense"
    if info.kind == "dir":
        cands = [Path(info.location)]
    elif info.name == "tiny-llama":
        cands = [dense / "tiny-llama-v1"]
    elif info.location and str(info.location).endswith(".gguf"):
        cands = sorted(dense.glob(f"{Path(info.location).stem}-*")) if dense.is_dir() else []
    else:
        return None
    cands = [c for c in cands if (c / "tokenizer.json").is_file() or (c / "tokenizer_config.json").is_file()]
    return cands[0] if len(cands) == 1 else None
