"""Masks (prunekit/solvers/masks.py, docs/methods.md §0.5): exact per-row / per-matrix counts, N:M groups."""
from __future__ import annotations

import math

import pytest
import torch

from prunekit.solvers.masks import magnitude_mask, wanda_mask
from prunekit.solvers.sparsegpt import sparsegpt


@pytest.mark.parametrize("s", [0.3, 0.5, 0.7])
def test_wanda_exact_per_row_sparsity(s):
    torch.manual_seed(1)
    W, norm = torch.randn(16, 40), torch.rand(40) + 0.1
    mask = wanda_mask(W, norm, s)
    assert (mask.sum(1) == math.floor(40 * s + 0.5)).all()  # round(n·s), no float truncation
    # pruned entries are the row's lowest scores: brute force per row
    score = W.abs() * norm
    for r in range(16):
        kept_min = score[r][~mask[r]].min()
        assert (score[r][mask[r]] <= kept_min).all()


@pytest.mark.parametrize("nm", [(2, 4), (4, 8)])
def test_nm_every_group_has_exactly_n_zeros(nm):
    n, m = nm
    torch.manual_seed(2)
    W, norm = torch.randn(8, 32), torch.rand(32) + 0.1
    H = (lambda X: X.T @ X)(torch.randn(200, 32))
    for mask in (magnitude_mask(W, 0, nm), wanda_mask(W, norm, 0, nm)):
        assert (mask.reshape(8, -1, m).sum(-1) == n).all()
    Wq = sparsegpt(W, H, 0.0, nm=nm, blocksize=16)
    assert ((Wq == 0).reshape(8, -1, m).sum(-1) == n).all()


def test_magnitude_prunes_the_smallest_globally():
    torch.manual_seed(3)
    W = torch.randn(10, 20)
    mask = magnitude_mask(W, 0.6)
    assert mask.sum() == int(200 * 0.6)
    assert W.abs()[mask].max() <= W.abs()[~mask].min()
