"""SparseGPT per shared input vs per linear, on one SmolLM2-shaped block (random weights, one Hessian).

    python -m benchmarks.sparsegpt [--hidden 576 --mlp 1536 --kv 192 --repeats 2]

q/k/v (hidden → hidden, kv, kv) read one input, gate/up (hidden → mlp) another: per-linear
SparseGPT runs 5 factorisations and 5 column loops, the stacked solve 2 of each. Prints both walls,
their ratio and the largest relative weight difference (results are equal up to float rounding).
"""
from __future__ import annotations

import argparse
import time

import torch


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sparsegpt", description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--mlp", type=int, default=1536)
    ap.add_argument("--kv", type=int, default=192)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--sparsity", type=float, default=0.5)
    args = ap.parse_args(argv)

    from prunekit.solvers.sparsegpt import SparseGPT, sparsegpt
    g = torch.Generator().manual_seed(0)
    d = args.hidden
    X = torch.randn(args.tokens, d, generator=g)
    H = 2 * X.t() @ X / args.tokens
    groups = [[torch.randn(d, d, generator=g), torch.randn(args.kv, d, generator=g),
               torch.randn(args.kv, d, generator=g)],
              [torch.randn(args.mlp, d, generator=g), torch.randn(args.mlp, d, generator=g)]]
    out = {}
    for r in range(args.repeats):
        t0 = time.perf_counter()
        per = [sparsegpt(W, H, args.sparsity) for grp in groups for W in grp]
        t1 = time.perf_counter()
        stacked = [w for grp in groups for w in SparseGPT(H.clone()).prune(grp, [args.sparsity] * len(grp))]
        t2 = time.perf_counter()
        diff = max(float((a - b).norm() / b.norm()) for a, b in zip(stacked, per))
        out = {"per_linear_s": t1 - t0, "stacked_s": t2 - t1, "ratio": (t2 - t1) / (t1 - t0), "max_rel_diff": diff}
        print(f"repeat {r}: per-linear {t1 - t0:.2f} s, stacked {t2 - t1:.2f} s, stacked / per-linear "
              f"{out['ratio']:.2f}; max relative weight difference {diff:.1e}; torch threads {torch.get_num_threads()}")
    return out


if __name__ == "__main__":
    main()
