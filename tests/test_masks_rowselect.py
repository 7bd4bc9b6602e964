"""Wanda's per-row selection by k-th value equals a stable ascending sort, ties included."""
from __future__ import annotations

import math

import pytest
import torch

from prunekit.solvers.masks import _row_mask


def _by_sort(score, s):
    k = math.floor(score.shape[1] * s + 0.5)  # round(n·s), written independently of prune_count
    mask = torch.zeros_like(score, dtype=torch.bool)
    if k > 0:
        mask.scatter_(1, torch.sort(score, dim=1, stable=True)[1][:, :k], True)
    return mask


@pytest.mark.parametrize("s", [0.0, 0.1, 0.5, 0.7, 0.99])
@pytest.mark.parametrize("ties", [False, True])
def test_row_mask_equals_stable_sort(s, ties):
    g = torch.Generator().manual_seed(0)
    score = torch.rand(37, 64, generator=g)
    if ties:  # few distinct values: many ties at every threshold
        score = torch.randint(0, 5, (37, 64), generator=g).float()
    got = _row_mask(score, s)
    assert torch.equal(got, _by_sort(score, s))
    assert (got.sum(1) == math.floor(64 * s + 0.5)).all()


@pytest.mark.parametrize("chunk_rows", [1, 5, 1024])
@pytest.mark.parametrize("s", [0.3, 0.5, 1.0 - 1e-9])
def test_row_mask_chunks_and_mixed_ties(chunk_rows, s):
    """Row chunks and the tie fix-up that runs only on rows where ``score <= t`` overshoots k:
    rows with and without ties at the threshold in one matrix, against the stable sort."""
    g = torch.Generator().manual_seed(1)
    score = torch.rand(23, 48, generator=g)
    score[::3] = torch.randint(0, 4, (8, 48), generator=g).float()  # every third row: heavy ties
    got = _row_mask(score, s, chunk_rows=chunk_rows)
    assert torch.equal(got, _by_sort(score, s))
