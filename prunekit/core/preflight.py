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


CONFIG_LIMIT = 16 << 20      # bytes of a config.json / index file preflight will read
HEADER_LIMIT = 100 << 20     # bytes of a safetensors JSON header


def read_config(d: Path, name: str) -> dict:
    from prunekit.utils import read_regular
    try:
        cfg = json.loads(read_regular(d / "config.json", CONFIG_LIMIT, f"model '{name}': "))
    except FileNotFoundError:
        raise PrunekitError(f"model '{name}': {d} has no config.json; not a HF model directory") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise PrunekitError(f"model '{name}': {d / 'config.json'} is not valid JSON ({type(e).__name__})") from None
    if not isinstance(cfg, dict):
        raise PrunekitError(f"model '{name}': {d / 'config.json'} is not a JSON object")
    return cfg


def check_safetensors(path: Path, name: str) -> dict:
    """Header of a safetensors file: 8-byte little-endian header length, a JSON header whose
    largest data offset must equal the payload size (a truncated or padded file fails here).
    Only a regular file is opened (a FIFO or device never blocks the check). Returns the header."""
    import os
    import stat
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise PrunekitError(f"model '{name}': {path} is not a regular file (directory, device or pipe)")
        size = st.st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > HEADER_LIMIT:
                raise ValueError(f"header length {n} exceeds the file")
            header = json.loads(f.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end != size:
            raise ValueError(f"{size} bytes on disk, header describes {8 + n + end}")
        return header
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise PrunekitError(f"model '{name}': {path} is truncated or corrupt ({str(e).splitlines()[0]})") from None


def check_model_dir(d: Path, name: str) -> ModelInfo:
    cfg = read_config(d, name)
    mt, blocks, pos = config_info(cfg)
    if not isinstance(blocks, int) or isinstance(blocks, bool) or blocks < 1:
        raise PrunekitError(f"model '{name}': {d / 'config.json'} gives num_hidden_layers={blocks!r}; "
                            "a model needs at least 1 decoder block")
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
        from prunekit.utils import read_regular
        try:
            shards = sorted(set(json.loads(read_regular(index, CONFIG_LIMIT, f"model '{name}': "))["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError):
            raise PrunekitError(f"model '{name}': {index} is not a valid safetensors index") from None
        missing = [s for s in shards if not (d / s).is_file()]
        if missing:
            raise PrunekitError(f"model '{name}': shard {missing[0]} named in {index.name} is missing")
        weights = [d / s for s in shards]
    keys = set()
    for w in weights:
        keys |= set(check_safetensors(w, name)) - {"__metadata__"}
    check_blocks(keys, BLOCK_PATHS[mt], blocks, name)
    return ModelInfo(name, "dir", str(d), mt, blocks, pos, widths(cfg))


def check_blocks(keys, block_path: str, blocks: int, name: str) -> None:
    """The config's block count against the blocks the weights hold (``<block_path>.<i>.``): a
    config claiming more blocks than stored would get random weights for the rest."""
    import re
    found = set()
    # checkpoints name the blocks with or without the CausalLM prefix (gemma3: language_model.model.layers)
    pat = re.compile(r"(?:^|\.)%s\.(\d+)\." % re.escape(block_path.rsplit(".", 1)[-1]))
    for k in keys:
        m = pat.search(k)
        if m and not any(t in k for t in ("vision", "audio", "multi_modal")):
            found.add(int(m.group(1)))
    if not found:
        raise PrunekitError(f"model '{name}': its weights hold no decoder block ({block_path}.N.*)")
    if found != set(range(blocks)):
        have = len(found)
        raise PrunekitError(f"model '{name}': config.json declares {blocks} decoder blocks but the weights hold "
                            f"{have} (indices {min(found)}..{max(found)}); the config does not match the weights")


# ----------------------------------------------------------------------------- GGUF header

_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


class _Reader:
    """Little-endian GGUF primitives over a binary file."""

    def __init__(self, f):
        self.f = f

    def rd(self, fmt):
        b = self.f.read(struct.calcsize(fmt))
        if len(b) < struct.calcsize(fmt):
            raise ValueError("truncated header")
        return struct.unpack(fmt, b)[0]

    def rstr(self):
        n = self.rd("<Q")
        if n > 1 << 24:
            raise ValueError("bad string length")
        b = self.f.read(n)
        if len(b) < n:
            raise ValueError("truncated header")
        return b.decode("utf-8", "replace")

    def value(self, t):
        if t in _SCALAR:
            return self.rd(_SCALAR[t])
        if t == 8:
            return self.rstr()
        if t == 9:
            et, n = self.rd("<I"), self.rd("<Q")
            if et == 8:
                for _ in range(n):
                    self.f.seek(self.rd("<Q"), 1)
            elif et in _SCALAR:
                self.f.seek(n * struct.calcsize(_SCALAR[et]), 1)
            else:
                raise ValueError(f"array of type {et}")
            return None
        raise ValueError(f"value type {t}")


def _open_gguf(f) -> tuple[_Reader, int, int]:
    r = _Reader(f)
    if f.read(4) != b"GGUF":
        raise ValueError("bad magic")
    version = r.rd("<I")
    if version < 2:
        raise ValueError(f"GGUF version {version}")
    return r, r.rd("<Q"), r.rd("<Q")


def gguf_header(path: Path, want=("general.architecture",),
                suffixes=(".block_count", ".context_length", ".embedding_length", ".feed_forward_length")) -> dict:
    """Scalar/string key-values of a GGUF header up to the keys wanted. gguf.GGUFReader parses every
    tensor descriptor too (8 s for SmolLM2 on a busy 2-core box); this reads only the KV section."""
    out: dict = {}
    with open(path, "rb") as f:
        r, _, n_kv = _open_gguf(f)
        for _ in range(n_kv):
            key = r.rstr()
            v = r.value(r.rd("<I"))
            if key in want or key.endswith(suffixes):
                out[key] = v
            arch = out.get("general.architecture")
            if arch and all(f"{arch}{s}" in out for s in suffixes):
                break
    return out


def gguf_data_size(path: Path) -> tuple[int, int]:
    """(bytes the tensor descriptors say the file needs, bytes on disk): every KV pair and tensor
    descriptor is read (no tensor data); a truncated download needs more than it has."""
    try:
        from gguf.constants import GGML_QUANT_SIZES
    except ImportError:  # pragma: no cover - gguf ships with transformers' GGUF support
        GGML_QUANT_SIZES = {}
    with open(path, "rb") as f:
        r, n_tensors, n_kv = _open_gguf(f)
        align = 32
        for _ in range(n_kv):
            key = r.rstr()
            v = r.value(r.rd("<I"))
            if key == "general.alignment" and isinstance(v, int) and v > 0:
                align = v
        end = 0
        for _ in range(n_tensors):
            r.rstr()
            nd = r.rd("<I")
            if nd > 8:
                raise ValueError(f"tensor with {nd} dimensions")
            n = 1
            for _ in range(nd):
                n *= r.rd("<Q")
            qt, off = r.rd("<I"), r.rd("<Q")
            bs, ts = GGML_QUANT_SIZES.get(qt, (1, 0))
            end = max(end, off + n // bs * ts)
        start = -(-f.tell() // align) * align
        return start + end, path.stat().st_size


def gguf_info(path: Path, name: str) -> ModelInfo:
    import os
    import stat
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise PrunekitError(f"model '{name}': {path} is not a regular file (directory, device or pipe)")
        h = gguf_header(path)
        need, have = gguf_data_size(path)
    except (OSError, ValueError, struct.error) as e:
        raise PrunekitError(f"model '{name}': {path} has an unreadable GGUF header ({e})") from None
    if have < need:
        raise PrunekitError(f"model '{name}': {path} is truncated ({have} bytes on disk, its tensors need {need}); "
                            "re-download it")
    arch = h.get("general.architecture")
    widths = tuple(sorted({h[k] for k in (f"{arch}.embedding_length", f"{arch}.feed_forward_length") if k in h}))
    return ModelInfo(name, "gguf", str(path), arch, h.get(f"{arch}.block_count"), h.get(f"{arch}.context_length"),
                     widths)
