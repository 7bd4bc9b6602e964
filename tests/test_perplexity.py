"""Perplexity (prunekit/evaluation/perplexity.py, docs/methods.md §0.3) against an independent computation."""
from __future__ import annotations

import math

import numpy as np
import torch
from conftest import tiny_model

from prunekit.evaluation.perplexity import perplexity_from_nlls, window_nlls


def test_perplexity_equals_exp_mean_nll_computed_independently():
    model = tiny_model("llama")
    torch.manual_seed(6)
    ids = torch.randint(0, 256, (1, 16 * 5 + 7))
    nlls = window_nlls(model, ids, 16, progress=False)
    assert len(nlls) == 5
    losses = []
    with torch.no_grad():
        for i in range(5):
            x = ids[:, i * 16:(i + 1) * 16]
            losses.append(model(input_ids=x, labels=x).loss.item())  # HF's own shifted CE
    assert math.isclose(perplexity_from_nlls(nlls, 16), math.exp(np.mean(losses)), rel_tol=1e-5)
    assert len(window_nlls(model, ids, 16, max_windows=2, progress=False)) == 2
    nb = window_nlls(model, ids, 16, batch_size=3, progress=False)
    assert torch.allclose(nb, nlls, atol=1e-5)
