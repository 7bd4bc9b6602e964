"""Benchmark: cost of measuring every block's absorption coefficient ÷ one dense forward.

    python -m benchmarks.absorption [--model smollm2-135m] [--samples 4] [--seqlen 128] [--draws 1]

Goal: ≤ 1.2 × number of blocks dense-forward equivalents, with the clean run computed once
and reused. Reports wall time and the deterministic count of decoder-block calls (÷ L = forward
equivalents, immune to CPU contention).
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--draws", type=int, default=1)
    ap.add_argument("--eta", type=float, default=1e-2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2, help="dense forwards timed (median)")
    args = ap.parse_args(argv)

    from prunekit.allocation.absorption.probe import Probe
    from prunekit.core.data import calibration_data
    from prunekit.core.loading import load_model

    rt = load_model(args.model)
    model = rt.model
    ids = calibration_data("c4", rt.tokenizer, args.samples, args.seqlen, 0).input_ids
    L = model.config.num_hidden_layers
    times = []
    with torch.no_grad():
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for s in range(0, ids.shape[0], args.batch_size):
                model(input_ids=ids[s:s + args.batch_size].to(rt.device), use_cache=False)
            times.append(time.perf_counter() - t0)
    dense = sorted(times)[len(times) // 2]

    t0 = time.perf_counter()
    probe = Probe(rt, ids, batch_size=args.batch_size, progress=False)
    t_clean = time.perf_counter() - t0
    clean_runs = probe.block_runs
    r = probe.coefficients(eta=args.eta, draws=args.draws)
    total = time.perf_counter() - t0
    mem = sum(h.numel() * h.element_size() for hs in probe.ckpt.values() for h in hs)
    out = {"model": args.model, "blocks": L, "tokens": int(ids.numel()), "draws": args.draws,
           "dense_forward_s": round(dense, 3), "clean_run_s": round(t_clean, 3),
           "all_coefficients_s": round(total, 3),
           "ratio_wall": round(total / dense, 2), "goal": round(1.2 * L, 1),
           "block_calls": probe.block_runs, "clean_block_calls": clean_runs,
           "ratio_block_calls": round(probe.block_runs / L, 2),
           "stored_boundaries_MB": round(mem / 2**20, 1),
           "r": [round(float(x), 4) for x in r]}
    out["within_goal"] = out["ratio_wall"] <= out["goal"]
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
