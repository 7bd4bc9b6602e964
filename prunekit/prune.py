"""Prune: magnitude, Wanda and SparseGPT (unstructured and N:M) driven by a per-block/per-matrix plan.

Every metric runs inside the one sequential engine (``calibrate.sequential``). Realised sparsity is
measured from zeros over the decoder-block linears (ALGORITHMS.md §0.2, check_sparsity).
Deviation from the reference code, on purpose: unstructured masks prune exactly ``int(n*s)``
weights of each comparison group (the reference's ``<= threshold`` prunes ties and one extra).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from .calibrate import sequential
from .errors import PrunekitError
from .models import layout

METRICS = ("magnitude", "wanda", "sparsegpt")
COLLECT = {"magnitude": (), "wanda": ("wanda",), "sparsegpt": ("hessian",)}


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

def _row_mask(score: torch.Tensor, s: float) -> torch.Tensor:
    """Prune the int(d_in*s) lowest scores of every row (Wanda's comparison group)."""
    k = int(score.shape[1] * s)
    mask = torch.zeros_like(score, dtype=torch.bool)
    if k > 0:
        idx = torch.sort(score, dim=1, stable=True)[1][:, :k]
        mask.scatter_(1, idx, True)
    return mask


def _nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Per row, in every group of m consecutive columns, prune the n lowest scores."""
    rows, cols = score.shape
    g = score.reshape(rows, cols // m, m)
    idx = torch.topk(g, n, dim=2, largest=False)[1]
    mask = torch.zeros_like(g, dtype=torch.bool).scatter_(2, idx, True)
    return mask.reshape(rows, cols)


def _global_mask(score: torch.Tensor, s: float) -> torch.Tensor:
    """Prune the int(numel*s) lowest scores of the whole tensor (magnitude's comparison group)."""
    k = int(score.numel() * s)
    mask = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
    if k > 0:
        mask[torch.topk(score.reshape(-1), k, largest=False)[1]] = True
    return mask.reshape(score.shape)


def magnitude_mask(W: torch.Tensor, s: float, nm=None) -> torch.Tensor:
    score = W.abs().float()
    return _nm_mask(score, *nm) if nm else _global_mask(score, s)


def wanda_score(W: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """A_ij = |W_ij| * ||X_j||_2 (Wanda, eq. 1)."""
    return W.abs().float() * norm.reshape(1, -1)


def wanda_mask(W: torch.Tensor, norm: torch.Tensor, s: float, nm=None) -> torch.Tensor:
    score = wanda_score(W, norm)
    return _nm_mask(score, *nm) if nm else _row_mask(score, s)


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

def plan_matrix(plan, lay) -> np.ndarray:
    """(num_blocks, num_linears) sparsities from a float, a per-block vector, or a SparsityPlan."""
    L, K = lay.num_blocks, len(lay.linear_names)
    if isinstance(plan, (int, float)):
        check_sparsity_value(float(plan))
        return np.full((L, K), float(plan))
    vals = np.asarray(getattr(plan, "values", plan), dtype=float)
    if vals.ndim == 1:
        vals = np.repeat(vals[:, None], K, axis=1)
    if vals.shape != (L, K):
        raise PrunekitError(f"plan has shape {vals.shape}, model needs ({L}, {K}) or ({L},)")
    if (vals < 0).any() or (vals >= 1).any():
        raise PrunekitError("plan sparsities must lie in [0, 1)")
    return vals


def prune_block(i: int, block, stats, values: np.ndarray, metric: str, nm, names: list[str],
                blocksize: int = 128, percdamp: float = 0.01) -> None:
    """Prune every linear of block i in place with its planned sparsity."""
    mods = dict(block.named_modules())
    for k, name in enumerate(names):
        lin = mods[name]
        W = lin.weight.data
        s = float(values[i, k])
        if s == 0.0 and nm is None:
            continue
        if metric == "magnitude":
            W[magnitude_mask(W, s, nm)] = 0
        elif metric == "wanda":
            W[wanda_mask(W, stats["wanda"][name].norm, s, nm)] = 0
        else:
            W.copy_(sparsegpt(W, stats["hessian"][name].H, s, nm, blocksize, percdamp).to(W.dtype))


def prune_model(model, calib_ids: torch.Tensor, plan, metric: str = "wanda", nm=None,
                batch_size: int = 8, blocksize: int = 128, percdamp: float = 0.01,
                progress: bool = True) -> dict:
    """Prune ``model`` in place, block by block, on calibration windows ``calib_ids`` (n, seqlen).
    ``plan``: a float (uniform), per-block vector, (blocks, linears) array or SparsityPlan."""
    if metric not in METRICS:
        raise PrunekitError(f"unknown metric '{metric}'; choose from {', '.join(METRICS)}")
    nm = parse_nm(nm)
    lay = layout(model)
    values = plan_matrix(plan, lay)
    for n, m in lay.linears(0).items():
        _check_nm_width(nm, m.in_features, n)
    t0 = time.perf_counter()
    need_data = metric != "magnitude"

    def on_block(i, block, stats):
        prune_block(i, block, stats, values, metric, nm, lay.linear_names, blocksize, percdamp)

    if need_data:
        sequential(model, calib_ids, collect=COLLECT[metric], on_block=on_block,
                   batch_size=batch_size, desc=f"prune[{metric}]", progress=progress)
    else:
        for i in range(lay.num_blocks):
            on_block(i, lay.blocks[i], {})
    return {"prune_s": time.perf_counter() - t0, **measure_sparsity(model)}


@torch.no_grad()
def measure_sparsity(model) -> dict:
    """Realised sparsity from zeros: per block and global over the decoder-block linears."""
    lay = layout(model)
    per_block, zeros, total = [], 0, 0
    for i in range(lay.num_blocks):
        z = n = 0
        for m in lay.linears(i).values():
            z += int((m.weight == 0).sum())
            n += m.weight.numel()
        per_block.append(z / n)
        zeros, total = zeros + z, total + n
    return {"layer_sparsity": per_block, "global_sparsity": zeros / total}
