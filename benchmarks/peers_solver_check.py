"""One linear, same W and same Hessian: prunekit's SparseGPT solve against llm-compressor's.

Separates the solvers from everything around them (calibration forwards, propagation across
blocks) when ``benchmarks/peers.py`` shows different pruned perplexities. Runs in ``.venv-peers``
(it imports llm-compressor) with this checkout's ``prunekit`` on the path:

    .venv-peers/bin/python benchmarks/peers_solver_check.py [--seed 0]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sparsity", type=float, default=0.5)
    a = ap.parse_args(argv)

    import torch
    from llmcompressor.modifiers.pruning.sparsegpt.sgpt_sparsify import sparsify_weight
    from prunekit.prune import sparsegpt
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(a.seed)
    d_out, d_in, ntok = 192, 576, 2048
    # correlated inputs with a few outlier channels, as LLM activations have
    X = torch.randn(ntok, d_in, generator=g) @ (torch.randn(d_in, d_in, generator=g) / d_in**0.5 + torch.eye(d_in))
    X[:, :5] *= 20
    W = torch.randn(d_out, d_in, generator=g) * 0.05
    H = X.T @ X
    lin = torch.nn.Linear(d_in, d_out, bias=False)
    lin.weight.data = W.clone()
    with torch.no_grad():
        Wp = sparsegpt(W, H, a.sparsity)
        _, Wl = sparsify_weight(lin, {lin: H.clone()}, a.sparsity, 0, 0, 128, 0.01, False)

    def err(Q):  # layer reconstruction error ||(W - Q) X^T||^2 that SparseGPT minimises
        return float(((W - Q) @ X.T).pow(2).sum())

    mp, ml = Wp == 0, Wl == 0
    print(f"sparsity: prunekit {mp.float().mean():.5f}, llm-compressor {ml.float().mean():.5f}")
    print(f"mask agreement {(mp == ml).float().mean():.6f}; relative weight difference "
          f"{float((Wp - Wl).norm() / Wl.norm()):.3e}")
    print(f"reconstruction error prunekit ÷ llm-compressor {err(Wp) / err(Wl):.5f}")


if __name__ == "__main__":
    main()
