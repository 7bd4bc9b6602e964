"""SparseGPT (prunekit/solvers/sparsegpt.py, docs/methods.md §0.5): OBS reconstruction and its identities."""
from __future__ import annotations

import torch

from prunekit.solvers.masks import magnitude_mask, wanda_mask
from prunekit.solvers.sparsegpt import sparsegpt


def test_sparsegpt_reconstruction_beats_magnitude_and_wanda():
    torch.manual_seed(4)
    d_in, d_out, n = 64, 32, 512
    mix = torch.randn(d_in, d_in) * 0.3 + torch.eye(d_in)
    X = torch.randn(n, d_in) @ mix * (torch.rand(d_in) * 3)  # correlated, uneven columns
    W = torch.randn(d_out, d_in)
    H = 2.0 / n * X.T @ X
    norm = X.pow(2).sum(0).sqrt()
    err = {}
    for s in (0.5, 0.7):
        Wm = W.masked_fill(magnitude_mask(W, s), 0)
        Ww = W.masked_fill(wanda_mask(W, norm, s), 0)
        Ws = sparsegpt(W, H, s, blocksize=16)
        assert abs((Ws == 0).float().mean().item() - s) < 0.02
        err = {k: torch.linalg.norm(X @ (W - V).T).item() for k, V in (("mag", Wm), ("wanda", Ww), ("sgpt", Ws))}
        assert err["sgpt"] < err["wanda"] and err["sgpt"] < err["mag"], err


def test_sparsegpt_zero_sparsity_is_identity_up_to_damping():
    torch.manual_seed(5)
    W = torch.randn(8, 32)
    X = torch.randn(300, 32)
    Ws = sparsegpt(W, 2 / 300 * X.T @ X, 0.0)
    assert torch.allclose(Ws, W, atol=1e-5)
