"""Benchmark: cost of the baseline allocation methods' statistics and a planning sweep.

    python -m benchmarks.allocation [--model smollm2-135m] [--samples 16] [--seqlen 256] [--cache]
                                    [--threads N]

1. For each method (uniform, owl, alphapruning, atp) the time of its first ``session.plan`` call on
   a fresh ``Statistics`` — i.e. the time to compute what it needs (OWL: one dense Wanda pass + LOD;
   AlphaPruning: one SVD per linear; ATP / uniform: nothing).
2. A sweep of the 4 allocations × sparsities (0.5, 0.6, 0.7) planned with ``session.plan`` (no
   pruning, no evaluation), with the number of dense calibration passes the whole run needed
   (goal: 1, shared by every method and sparsity).

By default the on-disk statistics cache is bypassed so the timings are cold; ``--cache`` uses it.
Needs ``PRUNEKIT_DATA_DIR`` (or network access) for the C4 calibration text.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from prunekit.experiments.session import Session
from prunekit.scoring.statistics import Statistics

METHODS = ("uniform", "owl", "alphapruning", "atp")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.6, 0.7])
    ap.add_argument("--cache", action="store_true", help="use the on-disk statistics cache")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (1 avoids OpenMP oversubscription on a shared CPU)")
    args = ap.parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    s = Session(model_name=args.model, calib_samples=args.samples, calib_seqlen=args.seqlen,
                seed=args.seed, progress=not args.no_progress)
    if not args.cache:  # cold statistics: in-memory memoisation only
        s.stats = Statistics(s.runtime, s.calib, cache=False, batch_size=s.batch_size,
                             progress=not args.no_progress)
    print(f"model {args.model}: {s.layout.num_blocks} blocks × {len(s.layout.linear_names)} linears; "
          f"calibration {args.samples}×{args.seqlen} tokens; setup {time.perf_counter() - t0:.1f}s "
          f"(load {s.timings['load_s']:.1f}s, data {s.timings['data_s']:.1f}s); "
          f"disk cache {'on' if args.cache else 'off'}; torch threads {__import__('torch').get_num_threads()}")

    print("\n[1] statistics cost (first plan of each method, S=0.5)")
    print(f"{'method':<14}{'seconds':>9}{'dense passes after':>20}")
    stat_s = {}
    for m in METHODS:
        t = time.perf_counter()
        s.plan(m, 0.5)
        stat_s[m] = time.perf_counter() - t
        print(f"{m:<14}{stat_s[m]:>9.2f}{s.stats.dense_passes:>20d}")

    print("\n[2] planning sweep (allocation × sparsity)")
    print(f"{'method':<14}{'S':>5}{'plan ms':>9}{'global':>9}{'min':>7}{'max':>7}  per-block (first 6)")
    rows = []
    t_sweep = time.perf_counter()
    for m in METHODS:
        for sp in args.sparsities:
            t = time.perf_counter()
            p = s.plan(m, sp)
            ms = 1e3 * (time.perf_counter() - t)
            pb = p.per_block
            rows.append({"method": m, "sparsity": sp, "plan_ms": ms, "global": p.global_sparsity,
                         "per_block": pb.tolist()})
            print(f"{m:<14}{sp:>5.2f}{ms:>9.1f}{p.global_sparsity:>9.4f}{pb.min():>7.3f}{pb.max():>7.3f}  "
                  + " ".join(f"{v:.3f}" for v in pb[:6]))
    sweep_s = time.perf_counter() - t_sweep
    print(f"\nsweep of {len(rows)} plans: {sweep_s:.2f}s; dense calibration passes in this run: "
          f"{s.stats.dense_passes} (goal 1)")
    owl_lod = s.plan("owl", 0.7).extras["lod"]
    alpha_b = s.plan("alphapruning", 0.7).extras["alpha_block"]
    print(f"OWL LOD (%) range [{owl_lod.min():.3f}, {owl_lod.max():.3f}]; "
          f"AlphaPruning block alpha range [{alpha_b.min():.3f}, {alpha_b.max():.3f}]; "
          f"corr(LOD, alpha) = {np.corrcoef(owl_lod, alpha_b)[0, 1]:.3f}")
    return {"statistics_s": stat_s, "sweep": rows, "dense_passes": s.stats.dense_passes}


if __name__ == "__main__":
    main()
