"""Masks: per-row / N:M / global mask selection (docs/methods.md §0.2, §0.4)."""
from __future__ import annotations

import math

import torch

from prunekit.errors import PrunekitError
from prunekit.solvers import scores


def parse_nm(nm: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """'2:4' -> (2, 4): N of every M consecutive input weights are pruned."""
    if nm in (None, "", "none"):
        return None
    if isinstance(nm, tuple):
        n, m = nm
    else:
        try:
            n, m = (int(v) for v in str(nm).split(":"))
        except ValueError:
            raise PrunekitError(f"bad N:M pattern '{nm}'; write it like 2:4") from None
    if not (0 < n < m):
        raise PrunekitError(f"N:M pattern {n}:{m} needs 0 < N < M (N weights pruned of every M)")
    return n, m


def check_sparsity_value(s: float) -> None:
    if not (0.0 <= s < 1.0) or math.isnan(s):
        raise PrunekitError(f"sparsity {s} is outside [0, 1)")


def _check_nm_width(nm, d_in: int, name: str) -> None:
    if nm is not None and d_in % nm[1]:
        raise PrunekitError(f"N:M with M={nm[1]} does not divide the input width {d_in} of {name}")


# ----------------------------------------------------------------------------- masks (True = prune)

def prune_count(n: int, s: float) -> int:
    """Weights to prune of a group of ``n`` at sparsity ``s``: the nearest integer to n·s. ``int(n*s)``
    truncates 0.49999999·64 to 31 (a budget-fitted plan lands just below round targets), so a whole
    model fell 1-2 % short of 0.5; rounding keeps every group within half a weight of its plan."""
    return min(n, max(0, math.floor(n * s + 0.5)))


def _lowest_k(score: torch.Tensor, t: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, the k entries ≤ the row's k-th smallest value ``t`` (shape (rows, 1)): all below t,
    then the ties at t from the lowest index on — a stable ascending sort's first k."""
    below, tie = score < t, score == t
    return below | (tie & (tie.cumsum(1) <= k - below.sum(1, keepdim=True)))


def _row_mask(score: torch.Tensor, s: float, chunk_rows: int = 1024) -> torch.Tensor:
    """Prune the prune_count(d_in, s) lowest scores of every row (Wanda's comparison group); ties at the
    threshold go to the lower column index, as a stable ascending sort would order them.

    The k-th smallest value t of each row comes from a partial selection (topk unsorted: cheaper
    than kthvalue or a full sort); ``score <= t`` is then the mask
    except in the rare rows where a tie at t overshoots k, which are settled by a cumulative count.
    Rows go in chunks so the temporaries stay small on a 7B-size matrix."""
    rows, cols = score.shape
    k = prune_count(cols, s)
    if k <= 0:
        return torch.zeros_like(score, dtype=torch.bool)
    if k >= cols:
        return torch.ones_like(score, dtype=torch.bool)
    mask = torch.empty_like(score, dtype=torch.bool)
    for r0 in range(0, rows, chunk_rows):
        sc = score[r0:r0 + chunk_rows]
        t = torch.topk(sc, k, dim=1, largest=False, sorted=False).values.amax(1, keepdim=True)
        m = sc <= t
        over = (m.sum(1) > k).nonzero().flatten()
        if over.numel():  # ties at t beyond the k-th: keep the lowest column indices among them
            m[over] = _lowest_k(sc[over], t[over], k)
        mask[r0:r0 + chunk_rows] = m
    return mask


def _nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Per row, in every group of m consecutive columns, prune the n lowest scores."""
    rows, cols = score.shape
    g = score.reshape(rows, cols // m, m)
    idx = torch.topk(g, n, dim=2, largest=False)[1]
    mask = torch.zeros_like(g, dtype=torch.bool).scatter_(2, idx, True)
    return mask.reshape(rows, cols)


def _global_mask(score: torch.Tensor, s: float) -> torch.Tensor:
    """Prune the prune_count(numel, s) lowest scores of the whole tensor (magnitude's comparison
    group; SparseGPT's per column block). Ties at the threshold go to the lower flat index. A k-th
    value selection instead of topk(k): no k-sized sorted output to build for k = numel/2."""
    flat = score.reshape(-1)
    k = prune_count(flat.numel(), s)
    if k <= 0:
        return torch.zeros_like(score, dtype=torch.bool)
    t = torch.kthvalue(flat, k).values
    return _lowest_k(flat.unsqueeze(0), t.reshape(1, 1), k).reshape(score.shape)


def magnitude_mask(W: torch.Tensor, s: float, nm=None) -> torch.Tensor:
    score = scores.magnitude_score(W)
    return _nm_mask(score, *nm) if nm else _global_mask(score, s)


def wanda_mask(W: torch.Tensor, norm: torch.Tensor, s: float, nm=None) -> torch.Tensor:
    score = scores.wanda_score(W, norm)
    return _nm_mask(score, *nm) if nm else _row_mask(score, s)
