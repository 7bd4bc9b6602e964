"""next_token_ce: the chunked fp32 cross-entropy (CPU) against the plain fp32 cross-entropy over the
whole window, computed independently in fp64, for bf16 and fp32 logits and a tiny model in bf16."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_model

from prunekit.core.engine import next_token_ce
from prunekit.evaluation.perplexity import perplexity_from_nlls, window_nlls

pytestmark = pytest.mark.usefixtures("one_thread")


def _plain(logits, ids):
    """-log softmax(logits)[next token], in fp64 over the whole window at once, per sequence mean."""
    lp = torch.log_softmax(logits[:, :-1].double(), -1)
    return -lp.gather(2, ids[:, 1:, None]).squeeze(2).mean(1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("chunk_bytes", [1, 4 * 3000 * 7, 1 << 30])  # 1 row, 7 rows (uneven), all at once
def test_chunked_ce_equals_plain_ce(dtype, chunk_bytes):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 50, 3000, generator=g) * 4).to(dtype)
    ids = torch.randint(0, 3000, (3, 50), generator=g)
    got = next_token_ce(logits, ids, chunk_bytes=chunk_bytes)
    want = _plain(logits, ids)
    assert got.dtype == torch.float32 and got.shape == (3,)
    assert torch.allclose(got.double(), want, rtol=1e-6, atol=1e-6)


def test_bf16_model_perplexity_equals_plain_fp32_ce():
    """The issue's bound is 0.1 %; the chunks change only summation order, so 1e-5 holds.
    511 predicted tokens of a 4096 vocabulary: 256 rows per 4 MiB chunk, so two chunks."""
    model = tiny_model("llama", vocab=4096).to(torch.bfloat16)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 4096, (1, 2 * 512), generator=g)
    got = perplexity_from_nlls(window_nlls(model, ids, 512, progress=False), 512)
    with torch.no_grad():
        want = [float(_plain(model(input_ids=w[None], use_cache=False).logits, w[None])) for w in ids[0].split(512)]
    assert math.isclose(got, math.exp(sum(want) / len(want)), rel_tol=1e-5)
