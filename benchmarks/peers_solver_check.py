"""One linear, same W and same Hessian: prunekit's SparseGPT solve against llm-compressor's.

Separates the solvers from everything around them (calibration forwards, propagation across
blocks) when ``benchmarks/peers.py`` shows different pruned perplexities. Runs in ``.venv-peers``
(it imports llm-compressor) with this checkout's ``prunekit`` on the path:

    .venv-peers/bin/python benchmarks/peers_solver_check.py [--seed 0]            # synthetic linear
    .venv-peers/bin/python benchmarks/peers_solver_check.py --model DIR --blocks 0,1,15
        # real weights and dense-input Hessians (C4 8 x 256, seed 0) of those blocks' linears
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def compare(W, H, sparsity: float, X=None) -> str:
    import torch
    from llmcompressor.modifiers.pruning.sparsegpt.sgpt_sparsify import sparsify_weight

    from prunekit.solvers.sparsegpt import sparsegpt
    lin = torch.nn.Linear(W.shape[1], W.shape[0], bias=False)
    lin.weight.data = W.clone()
    with torch.no_grad():
        Wp = sparsegpt(W, H, sparsity)
        _, Wl = sparsify_weight(lin, {lin: H.clone()}, sparsity, 0, 0, 128, 0.01, False)

    def err(Q):  # layer reconstruction error tr(ΔW H ΔWᵀ) = ||ΔW Xᵀ||² up to H's scale
        return float(torch.einsum("ij,jk,ik->", W - Q, H, W - Q))

    mp, ml = Wp == 0, Wl == 0
    return (f"pruned prunekit {int(mp.sum())}, llm-compressor {int(ml.sum())}; mask agreement "
            f"{float((mp == ml).float().mean()):.5f}; relative weight difference "
            f"{float((Wp - Wl).norm() / Wl.norm()):.2e}; reconstruction error prunekit ÷ llm-compressor "
            f"{err(Wp) / err(Wl):.5f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--model", help="dense HF directory: use its real weights and Hessians")
    ap.add_argument("--blocks", default="0,1,15")
    a = ap.parse_args(argv)

    import torch
    torch.set_num_threads(1)
    if a.model:
        from prunekit.core.data import calibration_data
        from prunekit.core.engine import sequential
        from prunekit.core.loading import load_model
        rt = load_model(a.model, dtype="fp32")
        calib = calibration_data("c4", rt.tokenizer, 8, 256, a.seed)
        blocks, kept = {int(b) for b in a.blocks.split(",")}, {}

        def keep(i, block, stats):  # dense inputs: a read-only pass, nothing pruned
            if i in blocks:
                mods = dict(block.named_modules())
                for n, st in stats["hessian"].items():
                    kept[(i, n)] = (mods[n].weight.data.clone(), st.H.clone())
        sequential(rt, calib.input_ids, collect=("hessian",), on_block=keep, modifies=False, progress=False)
        for (i, n), (W, H) in kept.items():
            print(f"block {i} {n}: {compare(W, H, a.sparsity)}", flush=True)
        return
    g = torch.Generator().manual_seed(a.seed)
    d_out, d_in, ntok = 192, 576, 2048
    # correlated inputs with a few outlier channels, as LLM activations have
    X = torch.randn(ntok, d_in, generator=g) @ (torch.randn(d_in, d_in, generator=g) / d_in**0.5 + torch.eye(d_in))
    X[:, :5] *= 20
    W = torch.randn(d_out, d_in, generator=g) * 0.05
    print(f"synthetic {d_out}x{d_in}: {compare(W, X.T @ X, a.sparsity)}")


if __name__ == "__main__":
    main()
