"""SparseGPT (Frantar & Alistarh 2023; docs/methods.md §0.5): OBS column sweep with adaptive masks, read top to bottom."""
from __future__ import annotations

import torch

from prunekit.errors import PrunekitError
from prunekit.solvers.masks import _global_mask


def hessian_inverse_cholesky(H: torch.Tensor, percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor of (H + λI)^-1 with λ = percdamp·mean(diag H); dead inputs get H_jj=1.
    Returns (Hinv, dead). Damping grows ×10 if the factorisation fails."""
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    damp = percdamp * torch.mean(torch.diag(H))
    idx = torch.arange(H.shape[0], device=H.device)
    for _ in range(6):
        try:
            Hd = H.clone()
            Hd[idx, idx] += damp
            L = torch.linalg.cholesky(Hd)
            Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
            return Hinv, dead
        except torch.linalg.LinAlgError:
            damp = damp * 10 if damp > 0 else torch.tensor(1e-6, device=H.device)
    raise PrunekitError("Hessian is not positive definite even with heavy damping; use more calibration data")


@torch.no_grad()
def sparsegpt(W: torch.Tensor, H: torch.Tensor, s: float, nm=None, blocksize: int = 128,
              percdamp: float = 0.01) -> torch.Tensor:
    """SparseGPT (Frantar & Alistarh 2023, Alg. 1): OBS mask selection per column block of
    ``blocksize`` over all rows jointly (score w²/[H⁻¹]_jj²), then column-wise error feedback
    W[:, j:] -= (w_j - q_j)/[H⁻¹]_jj · H⁻¹_{j, j:} with lazy updates of later blocks. fp32 inside."""
    W = W.detach().float().clone()
    # Thousands of tiny sequential ops: on a CPU extra threads only add sync overhead (and
    # collapse under contention: 15 s vs 1.2 s per 576x1536 matrix here); GPUs are unaffected.
    threads = torch.get_num_threads()
    if W.device.type == "cpu":
        torch.set_num_threads(1)
    try:
        Hinv, dead = hessian_inverse_cholesky(H.float(), percdamp)
        W[:, dead] = 0
        _sparsegpt_columns(W, Hinv, s, nm, blocksize)
    finally:
        torch.set_num_threads(threads)
    return W


def _sparsegpt_columns(W: torch.Tensor, Hinv: torch.Tensor, s: float, nm, blocksize: int) -> None:
    """In place: mask selection per column block + OBS error feedback (SparseGPT Alg. 1)."""
    rows, cols = W.shape
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        if nm is None:
            mask1 = _global_mask(W1 ** 2 / d.reshape(1, -1) ** 2, s)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                sc = W1[:, i:i + nm[1]] ** 2 / d[i:i + nm[1]].reshape(1, -1) ** 2
                mask1.scatter_(1, i + torch.topk(sc, nm[0], dim=1, largest=False)[1], True)
            m = mask1[:, i]
            err = W1[:, i] * m / d[i]              # (w - q)/[H^-1]_ii with q = w·(1-mask)
            W1[:, i:].addr_(err, Hinv1[i, i:], alpha=-1)  # OBS update; column i becomes q
            W1[:, i].masked_fill_(m, 0)            # exact zeros despite rounding
            Err1[:, i] = err
        W[:, i1:i2] = W1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]


# ----------------------------------------------------------------------------- model-level pruning
