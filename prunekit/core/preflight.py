"""Preflight: what a model argument stands for, read cheaply before any weights load.

``peek_model(name)`` answers "is this loadable, and how many decoder blocks does it have?" from
config files and file headers only (no tensors, no dequantisation), so the CLI can reject bad
input — unknown ``model_type``, a truncated safetensors file, a pickle-only directory, an SV-NUP
window larger than the model — in milliseconds instead of after a load. Every problem is a
one-line ``PrunekitError`` naming the input.
"""
from __future__ import annotations

import json
import re
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
    tensors: dict = {}
    for w in weights:
        tensors.update((k, v) for k, v in check_safetensors(w, name).items() if k != "__metadata__")
    check_blocks(set(tensors), BLOCK_PATHS[mt], blocks, name)
    check_shapes(tensors, cfg, mt, name)
    return ModelInfo(name, "dir", str(d), mt, blocks, pos, widths(cfg))


def check_blocks(keys, block_path: str, blocks: int, name: str) -> None:
    """The config's block count against the blocks the weights hold (``<block_path>.<i>.``): a
    config claiming more blocks than stored would get random weights for the rest."""
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


def _dim(c: dict, key: str) -> int | None:
    v = c.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


# families whose modelling code derives head_dim = hidden_size // num_attention_heads when the
# config gives none (Qwen3 and Gemma-3 default to a fixed 128 / 256 instead: not derived here)
_DERIVED_HEAD_DIM = {"llama", "mistral", "qwen2", "smollm3", "opt"}


def expected_shapes(cfg: dict, mt: str) -> dict[str, tuple[tuple, str]]:
    """Weight kind (``q_proj``, ..., ``fc2``, ``embed_tokens``, ``lm_head``) -> (expected [out, in]
    shape, the config fields it comes from), from config.json alone (a multimodal checkpoint's
    nested ``text_config`` only). A dimension the config does not pin down is None (not compared):
    a nested config omits the fields that equal its class defaults, and prunekit does not guess them."""
    c = cfg["text_config"] if isinstance(cfg.get("text_config"), dict) else cfg
    H, V, nh = _dim(c, "hidden_size"), _dim(c, "vocab_size"), _dim(c, "num_attention_heads")
    if mt == "opt":
        F, E = _dim(c, "ffn_dim"), _dim(c, "word_embed_proj_dim") or H
        sq = ((H, H), "hidden_size x hidden_size")
        return {"q_proj": sq, "k_proj": sq, "v_proj": sq, "out_proj": sq,
                "fc1": ((F, H), "ffn_dim x hidden_size"), "fc2": ((H, F), "hidden_size x ffn_dim"),
                "embed_tokens": ((V, E), "vocab_size x word_embed_proj_dim"),
                "lm_head": ((V, E), "vocab_size x word_embed_proj_dim")}
    hd = _dim(c, "head_dim")
    if hd is None and mt in _DERIVED_HEAD_DIM and H and nh and H % nh == 0:
        hd = H // nh
    nkv = _dim(c, "num_key_value_heads")
    if nkv is None and "num_key_value_heads" in c and c["num_key_value_heads"] is None and mt in ("llama", "qwen2"):
        nkv = nh  # LLaMA / Qwen2: a null num_key_value_heads means plain multi-head attention
    q = nh * hd if nh and hd else None
    kv = nkv * hd if nkv and hd else None
    inter = _dim(c, "intermediate_size")
    return {"q_proj": ((q, H), "num_attention_heads*head_dim x hidden_size"),
            "k_proj": ((kv, H), "num_key_value_heads*head_dim x hidden_size"),
            "v_proj": ((kv, H), "num_key_value_heads*head_dim x hidden_size"),
            "o_proj": ((H, q), "hidden_size x num_attention_heads*head_dim"),
            "gate_proj": ((inter, H), "intermediate_size x hidden_size"),
            "up_proj": ((inter, H), "intermediate_size x hidden_size"),
            "down_proj": ((H, inter), "hidden_size x intermediate_size"),
            "embed_tokens": ((V, H), "vocab_size x hidden_size"),
            "lm_head": ((V, H), "vocab_size x hidden_size")}


_WEIGHT = re.compile(r"(?:(?:^|\.)layers\.\d+\.(?:(?:self_attn|mlp)\.)?(q_proj|k_proj|v_proj|o_proj|out_proj|gate_proj"
                     r"|up_proj|down_proj|fc1|fc2)|(?:^|\.)(embed_tokens)|^(?:[a-z_]+\.)?(lm_head))\.weight$")


def check_shapes(tensors: dict, cfg: dict, mt: str, name: str) -> None:
    """Each decoder block's attention and MLP weights, the token embedding and the head, as the
    safetensors header stores them, against the shapes config.json implies (hidden_size,
    intermediate_size / ffn_dim, attention heads, key/value heads, head_dim, vocab_size): an edited
    or mismatched config would otherwise fail inside the load, or load garbage. Only unquantised
    floating-point weights of known names are compared; anything else is left to the loader."""
    if cfg.get("quantization_config") is not None:
        return
    want = expected_shapes(cfg, mt)
    for key in sorted(tensors):
        info = tensors[key]
        m = _WEIGHT.search(key)
        if m is None or not isinstance(info, dict) or any(t in key for t in ("vision", "audio", "multi_modal")):
            continue
        dtype, shape = str(info.get("dtype", "")), info.get("shape")
        if not (dtype.startswith("F") or dtype == "BF16") or not isinstance(shape, list):
            continue
        exp, why = want.get(next(g for g in m.groups() if g), ((None, None), ""))
        if len(shape) != 2 or any(e is not None and e != s for e, s in zip(exp, shape)):
            shown = "[" + ", ".join("?" if e is None else str(e) for e in exp) + "]"
            raise PrunekitError(f"model '{name}': weight {key} has shape {list(shape)} but config.json implies "
                                f"{shown} ({why}); the config does not match the weights")


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


def gguf_tables(path: Path) -> tuple[dict, dict, int, int]:
    """(scalar key-values, tensor name -> dims in GGUF order (input width first), bytes the tensor
    descriptors say the file needs, bytes on disk): every KV pair and tensor descriptor is read
    (no tensor data); a truncated download needs more than it has."""
    try:
        from gguf.constants import GGML_QUANT_SIZES
    except ImportError:  # pragma: no cover - gguf ships with transformers' GGUF support
        GGML_QUANT_SIZES = {}
    kv, dims = {}, {}
    with open(path, "rb") as f:
        r, n_tensors, n_kv = _open_gguf(f)
        for _ in range(n_kv):
            key = r.rstr()
            v = r.value(r.rd("<I"))
            if v is not None:
                kv[key] = v
        align = kv.get("general.alignment") if isinstance(kv.get("general.alignment"), int) else 32
        align = align if align > 0 else 32
        end = 0
        for _ in range(n_tensors):
            name = r.rstr()
            nd = r.rd("<I")
            if nd > 8:
                raise ValueError(f"tensor with {nd} dimensions")
            shape = tuple(r.rd("<Q") for _ in range(nd))
            n = 1
            for d in shape:
                n *= d
            qt, off = r.rd("<I"), r.rd("<Q")
            bs, ts = GGML_QUANT_SIZES.get(qt, (1, 0))
            end = max(end, off + n // bs * ts)
            dims[name] = shape
        start = -(-f.tell() // align) * align
        return kv, dims, start + end, path.stat().st_size


# GGUF architectures whose tensors follow llama.cpp's LLaMA naming (blk.N.attn_q / ffn_up / ...)
GGUF_LLAMA_LIKE = {"llama", "mistral", "qwen2", "qwen3", "gemma3", "smollm3"}
_GGUF_BLOCK = re.compile(r"^blk\.(\d+)\.")


def check_gguf_tensors(kv: dict, dims: dict, path: Path, name: str) -> None:
    """The tensor table against the metadata, before anything is dequantised: the blocks present
    (``blk.N.*``) against ``block_count``, and each block's attention / MLP weights and the token
    embedding against ``embedding_length``, ``feed_forward_length`` and the attention head counts
    (llama.cpp's rule: head width = ``key_length`` or embedding_length / head_count)."""
    arch = kv.get("general.architecture")
    if arch not in GGUF_LLAMA_LIKE:
        return

    def get(key):
        v = kv.get(f"{arch}.{key}")
        return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None
    blocks, E, F = get("block_count"), get("embedding_length"), get("feed_forward_length")
    nh, nkv = get("attention.head_count"), get("attention.head_count_kv")
    nkv = nkv or nh
    kl = get("attention.key_length") or (E // nh if E and nh and E % nh == 0 else None)
    vl = get("attention.value_length") or kl
    found = {int(m.group(1)) for t in dims if (m := _GGUF_BLOCK.match(t))}
    if blocks is not None and found != set(range(blocks)):
        raise PrunekitError(f"model '{name}': {path} declares {arch}.block_count={blocks} but its tensors hold "
                            f"{len(found)} blocks; the metadata does not match the tensors")
    q, k, v = (nh * kl if nh and kl else None), (nkv * kl if nkv and kl else None), (nkv * vl if nkv and vl else None)
    o = nh * vl if nh and vl else None
    want = {"attn_q": ((E, q), "embedding_length, head_count*key_length"),
            "attn_k": ((E, k), "embedding_length, head_count_kv*key_length"),
            "attn_v": ((E, v), "embedding_length, head_count_kv*value_length"),
            "attn_output": ((o, E), "head_count*value_length, embedding_length"),
            "ffn_gate": ((E, F), "embedding_length, feed_forward_length"),
            "ffn_up": ((E, F), "embedding_length, feed_forward_length"),
            "ffn_down": ((F, E), "feed_forward_length, embedding_length"),
            "token_embd": ((E, None), "embedding_length, vocabulary"),
            "output": ((E, None), "embedding_length, vocabulary")}
    for t in sorted(dims):
        parts = t.split(".")
        if parts[-1] != "weight" or len(parts) not in (2, 4) or (len(parts) == 4 and parts[0] != "blk"):
            continue
        exp, why = want.get(parts[-2], ((None, None), ""))
        if len(parts) == 2 and parts[0] not in ("token_embd", "output") or not why:
            continue
        shape = dims[t]
        if len(shape) != 2 or any(e is not None and e != s for e, s in zip(exp, shape)):
            shown = "[" + ", ".join("?" if e is None else str(e) for e in exp) + "]"
            raise PrunekitError(f"model '{name}': {path} tensor {t} has dims {list(shape)} but its metadata implies "
                                f"{shown} ({arch}: {why}); the metadata does not match the tensors")


def gguf_info(path: Path, name: str) -> ModelInfo:
    import os
    import stat
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise PrunekitError(f"model '{name}': {path} is not a regular file (directory, device or pipe)")
        h, dims, need, have = gguf_tables(path)
    except (OSError, ValueError, struct.error) as e:
        raise PrunekitError(f"model '{name}': {path} has an unreadable GGUF header ({e})") from None
    if have < need:
        raise PrunekitError(f"model '{name}': {path} is truncated ({have} bytes on disk, its tensors need {need}); "
                            "re-download it")
    check_gguf_tensors(h, dims, path, name)
    arch = h.get("general.architecture")
    widths = tuple(sorted({h[k] for k in (f"{arch}.embedding_length", f"{arch}.feed_forward_length") if k in h}))
    return ModelInfo(name, "gguf", str(path), arch, h.get(f"{arch}.block_count"), h.get(f"{arch}.context_length"),
                     widths)
