"""The importance scores of the three solvers, in one place (docs/methods.md §0.2, §1).

Every consumer — the masks, the SparseGPT sweep, the dense statistics, MRP's tables and refresh, the
SV-NUP layer game (through the masks) — calls these through the module (``scores.wanda_score``), so
a change here reaches all of them (``tests/test_scores.py`` checks each one).
"""
from __future__ import annotations

import torch


def magnitude_score(W: torch.Tensor) -> torch.Tensor:
    """A_ij = |W_ij| (magnitude pruning), fp32."""
    return W.abs().float()


def wanda_score(W: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """A_ij = |W_ij| · ||X_j||_2 (Wanda, eq. 1): ``norm`` holds the input column norms (d_in,)."""
    return W.abs().float() * norm.reshape(1, -1)


def sparsegpt_score(W: torch.Tensor, hinv_diag: torch.Tensor) -> torch.Tensor:
    """A_ij = W_ij² / [H⁻¹]_jj² (SparseGPT's mask criterion, OBS eq. 3 with U = chol(H⁻¹)ᵀ):
    ``hinv_diag`` holds the diagonal of the upper Cholesky factor of the damped inverse (d_in,)."""
    return W.float().pow(2) / hinv_diag.float().reshape(1, -1).pow(2)
