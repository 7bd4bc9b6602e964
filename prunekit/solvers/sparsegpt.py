"""SparseGPT (Frantar & Alistarh 2023; docs/methods.md §0.5) as one class, read top to bottom.

``SparseGPT(H)`` owns one input's Hessian H = (2/N) Σ XᵀX: it damps it in place, factors the
inverse once, and ``prune`` sweeps the columns of every weight matrix that reads that input.
Linears fed the same tensor (q/k/v; gate/up) are row-stacked and solved in one column loop: the
OBS update of a row only involves that row and H⁻¹, so stacking changes nothing but the cost,
while each linear keeps its own sparsity (its mask is chosen within its own rows).
"""
from __future__ import annotations

import torch

from prunekit.errors import PrunekitError
from prunekit.solvers import scores
from prunekit.solvers.masks import _global_mask


class SparseGPT:
    """The OBS column sweep of SparseGPT Alg. 1 for the weights reading one input (fp32 inside).

    ``H``: the accumulated fp32 Hessian of that input, **damped and overwritten in place** (it
    ends up holding U, the upper Cholesky factor of (H + λI)⁻¹, which is ``self.Hinv``; no d×d
    matrix is allocated beyond one factor)."""

    def __init__(self, H: torch.Tensor, percdamp: float = 0.01, blocksize: int = 128):
        if H.dtype != torch.float32:
            raise PrunekitError(f"SparseGPT needs an fp32 Hessian, got {H.dtype}")
        self.blocksize = blocksize
        self.Hinv, self.dead = self._inverse_cholesky(H, percdamp)

    # ---- 1. damped Hessian → upper Cholesky factor of its inverse
    @staticmethod
    def _inverse_cholesky(H: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Upper Cholesky factor U of (H + λI)⁻¹, λ = percdamp·mean(diag H), inputs that never fire
        (H_jj = 0) set to H_jj = 1 and their weights zeroed. λ grows ×10 while the factorisation
        fails. Works on H in place and returns U in H's memory: peak is H plus one factor.

        With J the reversal permutation and J H J = R Rᵀ (lower R), H⁻¹ = (J R⁻¹ J)ᵀ (J R⁻¹ J) and
        J R⁻¹ J is upper triangular, so U = J R⁻¹ J: one Cholesky and one triangular inverse
        (≈ n³/3 + n³/3 flops) instead of Cholesky, cholesky_inverse and a second Cholesky (4n³/3)
        as in the reference code."""
        diag = H.diagonal()
        dead = diag == 0
        diag[dead] = 1
        damp = percdamp * diag.mean()
        diag += damp
        _flip_(H)                                            # H ← J H J (the diagonal damping is flip-invariant)
        for _ in range(6):
            R, info = torch.linalg.cholesky_ex(H)
            if int(info) == 0:
                _tril_inverse(R, out=H)                      # H ← R⁻¹
                del R
                _flip_(H)                                    # H ← J R⁻¹ J = U
                return H, dead
            extra = 9 * damp if damp > 0 else torch.tensor(1e-6, device=H.device)
            diag += extra                                    # total damping λ ← 10 λ
            damp = damp + extra
        raise PrunekitError("Hessian is not positive definite even with heavy damping; use more calibration data")

    # ---- 2. the column sweep over the row-stacked weights
    @torch.no_grad()
    def prune(self, weights: list[torch.Tensor], sparsities: list[float], nm=None) -> list[torch.Tensor]:
        """Prune each of ``weights`` (all reading this input) to its own sparsity (or N:M per row);
        return new fp32 tensors in the same order. The inputs are not modified."""
        rows = [w.shape[0] for w in weights]
        W = torch.cat([w.detach().float() for w in weights], 0)  # a fresh fp32 copy
        W[:, self.dead] = 0
        bounds = torch.tensor([0] + rows).cumsum(0).tolist()
        groups = [(bounds[k], bounds[k + 1], float(s)) for k, s in enumerate(sparsities)]
        # Thousands of tiny sequential ops: on a CPU extra threads only add sync overhead (and
        # collapse under contention); GPUs are unaffected.
        threads = torch.get_num_threads()
        if W.device.type == "cpu":
            torch.set_num_threads(1)
        try:
            self._sweep(W, groups, nm)
        finally:
            torch.set_num_threads(threads)
        return list(W.split(rows, 0))

    def _sweep(self, W: torch.Tensor, groups, nm) -> None:
        """In place, per column block of ``blocksize``: choose the mask (score w²/[H⁻¹]_jj², each
        linear over its own rows), then for each column j the OBS update
        W[:, j:] −= (w_j − q_j)/[H⁻¹]_jj · H⁻¹_{j, j:}; later blocks get the lazy batched update.

        Same arithmetic as Alg. 1, arranged for a CPU: the block is transposed so a column is one
        contiguous row, and the rank-1 updates are themselves lazy — each column updates only the
        rest of its ``sub``-column chunk, and a chunk's errors reach the rest of the block in one
        matmul (rank-1 updates are memory-bound, the matmul is not). Two torch calls per column."""
        Hinv, cols, B = self.Hinv, W.shape[1], self.blocksize
        sub = 32 if nm is None else nm[1] * max(1, 32 // nm[1])  # an N:M group never straddles chunks
        for i1 in range(0, cols, B):
            i2 = min(i1 + B, cols)
            n = i2 - i1
            U = Hinv[i1:i2, i1:i2]
            d = U.diagonal()
            Wt = W[:, i1:i2].t().contiguous()                 # (n, rows): row i = column i1 + i
            if nm is None:
                score = scores.sparsegpt_score(Wt.t(), d)
                mask = torch.cat([_global_mask(score[r0:r1], s) for r0, r1, s in groups], 0).t()
                scale = mask / d.reshape(-1, 1)               # err_i = w_i·m_i/[H⁻¹]_ii
            else:
                mask = torch.zeros_like(Wt, dtype=torch.bool)
                scale = torch.zeros_like(Wt)
            Et = torch.empty_like(Wt)                         # (w − q)/[H⁻¹]_ii per column
            for j1 in range(0, n, sub):
                j2 = min(j1 + sub, n)
                for i in range(j1, j2):
                    if nm is not None and i % nm[1] == 0:
                        g = slice(i, i + nm[1])
                        sc = scores.sparsegpt_score(Wt[g].t(), d[g])
                        mask[g].t().scatter_(1, torch.topk(sc, nm[0], dim=1, largest=False)[1], True)
                        torch.div(mask[g], d[g].reshape(-1, 1), out=scale[g])
                    e = torch.mul(Wt[i], scale[i], out=Et[i])
                    if i + 1 < j2:
                        Wt[i + 1:j2].addr_(U[i, i + 1:j2], e, alpha=-1)  # OBS update within the chunk
                if j2 < n:                                    # the chunk's errors, to the rest of the block
                    Wt[j2:].addmm_(U[j1:j2, j2:].t(), Et[j1:j2], alpha=-1)
            Wt.masked_fill_(mask, 0)                          # pruned weights are exact zeros
            W[:, i1:i2] = Wt.t()
            if i2 < cols:
                W[:, i2:].addmm_(Et.t(), Hinv[i1:i2, i2:], alpha=-1)


def _flip_(A: torch.Tensor, step: int = 256) -> None:
    """A ← J A J (reverse rows and columns) in place, ``step`` rows at a time (no d×d temporary)."""
    n = A.shape[0]
    for a in range(0, n // 2, step):
        b = min(a + step, n // 2)
        top = A[a:b].flip(0, 1)
        A[a:b] = A[n - b:n - a].flip(0, 1)
        A[n - b:n - a] = top
    if n % 2:
        A[n // 2] = A[n // 2].flip(0)


def _tril_inverse(R: torch.Tensor, out: torch.Tensor, leaf: int = 128) -> None:
    """out ← R⁻¹ for lower-triangular R, by halves: [[A, 0], [B, C]]⁻¹ = [[A⁻¹, 0], [−C⁻¹BA⁻¹, C⁻¹]]
    (two half-size matmuls per level: ≈ n³/3 flops in BLAS-3, where a triangular solve against the
    identity costs n³). Temporaries are at most half of R."""
    n = R.shape[0]
    if n <= leaf:
        out.copy_(torch.linalg.solve_triangular(R, torch.eye(n, dtype=R.dtype, device=R.device), upper=False))
        return
    h = n // 2
    _tril_inverse(R[:h, :h], out[:h, :h], leaf)
    _tril_inverse(R[h:, h:], out[h:, h:], leaf)
    out[:h, h:].zero_()
    low = out[h:, h:] @ (R[h:, :h] @ out[:h, :h])
    out[h:, :h] = low.neg_()


def hessian_inverse_cholesky(H: torch.Tensor, percdamp: float = 0.01, copy: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, dead) for ``H`` (see ``SparseGPT._inverse_cholesky``); ``copy=False`` lets it overwrite
    an fp32 ``H`` the caller no longer needs (a fresh ``Hessian.H``) instead of copying d × d again."""
    return SparseGPT._inverse_cholesky(H.to(torch.float32, copy=copy), percdamp)


@torch.no_grad()
def sparsegpt(W: torch.Tensor, H: torch.Tensor, s: float, nm=None, blocksize: int = 128,
              percdamp: float = 0.01) -> torch.Tensor:
    """One linear on its own: SparseGPT of ``W`` with Hessian ``H`` (copied, not modified) at
    sparsity ``s``; returns the pruned fp32 weight."""
    return SparseGPT(H.to(torch.float32, copy=True), percdamp, blocksize).prune([W], [s], nm)[0]
