"""M4 (issue 12): with ``offload="cpu"`` the GPU holds one block at a time.

On a ~1B-shape random LLaMA (TinyLlama-1.1B shapes: hidden 2048, MLP 5632, 22 blocks, 32 heads,
4 KV heads, vocabulary 32000) ``torch.cuda.max_memory_allocated()`` during a Wanda and a SparseGPT
prune stays ≤ 1.2 × (one block's weights + the Hessians of one block + one batch of activations +
embeddings and head). "One batch of activations" is the block's forward working set for one
calibration batch: the hidden state in and out plus the q/k/v/o and gate/up/act intermediates,
B × T × (4·hidden + 3·MLP) elements. Skipped without CUDA (marker ``gpu``).
"""
from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SHAPE = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
             num_key_value_heads=4, vocab_size=32000)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    d = tmp_path_factory.mktemp("llama1b")
    cfg = LlamaConfig(max_position_embeddings=2048, tie_word_embeddings=False, **SHAPE)
    torch.manual_seed(0)
    with torch.device("cpu"):
        m = LlamaForCausalLM(cfg).to(torch.float16)
    m.save_pretrained(d, safe_serialization=True)
    del m
    tk = Tokenizer(models.WordLevel({str(i): i for i in range(SHAPE["vocab_size"])}, unk_token="0"))
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="0").save_pretrained(d)
    return d


@pytest.mark.parametrize("metric", ["wanda", "sparsegpt"])
def test_peak_gpu_memory_is_one_block(model_dir, metric):
    from prunekit.core.architectures import layout
    from prunekit.core.loading import load_model
    from prunekit.solvers.prune import prune_model
    B, T, n = 4, 512, 8
    m = load_model(str(model_dir), "cuda", "fp16", offload="cpu").model
    assert m.prunekit_offloader.mode == "cpu"
    lay = layout(m)
    H, I = SHAPE["hidden_size"], SHAPE["intermediate_size"]
    es = 2
    block = sum(p.numel() for p in lay.blocks[0].parameters()) * es
    hess = sum(lin.in_features ** 2 for lin in lay.linears(0).values()) * 4 if metric == "sparsegpt" else 0
    acts = B * T * (4 * H + 3 * I) * es
    emb_head = 2 * SHAPE["vocab_size"] * H * es
    ids = torch.randint(0, SHAPE["vocab_size"], (n, T), generator=torch.Generator().manual_seed(0))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    prune_model(m, ids, 0.5, metric, batch_size=B, progress=False)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    bound = block + hess + acts + emb_head
    assert peak <= 1.2 * bound, f"peak {peak / 2**20:.0f} MiB > 1.2 x {bound / 2**20:.0f} MiB"
