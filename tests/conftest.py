"""Shared fixtures: THE tiny-model factory (randomly initialised models of each supported family,
built from configs) and THE synthetic calibration helper; test files use these, not their own."""
from __future__ import annotations

import os

import pytest
import torch

# Tests that read the offline datasets take them from $PRUNEKIT_DATA_DIR only (the Makefile points it
# at ../shared/data) and skip without it.
needs_data = pytest.mark.skipif(not os.environ.get("PRUNEKIT_DATA_DIR"), reason="PRUNEKIT_DATA_DIR not set")


def tiny_model(kind: str = "llama", layers: int = 4, seed: int = 0, vocab: int = 256, **config):
    """A tiny random causal LM of family ``kind`` in eval mode, fp32. ``config``: further config
    fields (e.g. ``max_position_embeddings``, ``tie_word_embeddings``, token ids)."""
    import transformers as tf
    torch.manual_seed(seed)
    common = {"vocab_size": vocab, "num_hidden_layers": layers, "max_position_embeddings": 512, **config}
    if kind == "llama":
        cfg = tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                             num_key_value_heads=2, **common)
    elif kind == "qwen2":
        cfg = tf.Qwen2Config(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                             num_key_value_heads=2, **common)
    elif kind == "gemma3":
        cfg = tf.Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=16, sliding_window=8,
                                  layer_types=["sliding_attention", "full_attention"] * (layers // 2)
                                  + ["sliding_attention"] * (layers % 2), **common)
    elif kind == "opt":
        cfg = tf.OPTConfig(hidden_size=64, ffn_dim=128, num_attention_heads=4, word_embed_proj_dim=64, **common)
    else:
        raise ValueError(kind)
    cfg._attn_implementation = "eager"
    model = tf.AutoModelForCausalLM.from_config(cfg).eval()
    model.config.use_cache = False
    return model


def tiny_calib(n: int = 6, seqlen: int = 32, vocab: int = 256, seed: int = 0):
    """``n`` × ``seqlen`` uniform random token ids (seeded) as a ``Calibration``."""
    from prunekit.core.data import Calibration
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, seqlen), generator=g)
    return Calibration(ids, "synthetic", seed, "0" * 64, [(-1, i) for i in range(n)])


FAMILIES = ["llama", "qwen2", "gemma3", "opt"]  # the supported families tiny_model builds


@pytest.fixture(scope="module")
def tiny_stats():
    """Dense ``Statistics`` of the default tiny Llama on 4 × 32 random tokens (no disk cache)."""
    from prunekit.scoring.statistics import Statistics
    return Statistics(tiny_model(), tiny_calib(n=4, seqlen=32), cache=False, progress=False)


class ByteTokenizer:
    """Offline stand-in tokenizer: UTF-8 bytes, no special tokens."""
    bos_token = None
    backend_tokenizer = None

    def __call__(self, text, return_tensors=None):
        return {"input_ids": list(text.encode("utf-8"))}

    def get_vocab(self):
        return {str(i): i for i in range(256)}


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread avoids hand-off overhead and oversubscription (3-5x faster
    on a shared 2-core machine). Modules opt in with ``pytestmark = usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def byte_tokenizer():
    return ByteTokenizer()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch, request):
    # unit tests never touch the user's cache, except slow tests that reuse the dequantised model
    if "slow" not in request.keywords:
        monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))


def hf_byte_tokenizer():
    """A byte-level tokenizer built offline: one token per byte (+ <|endoftext|>), no merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def block_weights(model) -> dict:
    """(block, linear) -> a copy of the weight, every block onloaded (a Runtime or an in-memory model)."""
    from prunekit.core.runtime import Runtime
    rt = Runtime.of(model)
    out = {}
    for i in range(rt.num_blocks):
        with rt.onload(i):
            for n, m in rt.layout.linears(i).items():
                out[(i, n)] = m.weight.detach().clone()
    return out


def saved_tiny_llama(path, **config):
    """A random LLaMA (seed 0) with the byte-level tokenizer, saved by prunekit as a HF directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from prunekit.core.runtime import Runtime
    from prunekit.core.saving import save_model
    tok = hf_byte_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), **config)
    save_model(Runtime.of(LlamaForCausalLM(cfg).eval(), tok), path)
    return str(path)

