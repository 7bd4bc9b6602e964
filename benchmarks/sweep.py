"""Sweep benchmark: the Ray path's overhead over the in-process path on one small grid, and the
model loads each performed, measured in one run.

    overhead = Ray wall time ÷ in-process wall time          (same grid, same records)
    Ray wall time is reported with and without the local cluster's start-up.

    python -m benchmarks.sweep [--model tiny-llama --num-cpus 2 --seeds 2 --sparsities 0.5,0.7]

Set PRUNEKIT_THREADS=1 for a fair split on a small CPU: each Ray task then uses one core.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.sweep")
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--sparsities", default="0.5,0.7")
    ap.add_argument("--calib-samples", type=int, default=8)
    ap.add_argument("--calib-seqlen", type=int, default=128)
    ap.add_argument("--eval-windows", type=int, default=4)
    a = ap.parse_args(argv)
    os.environ.setdefault("PRUNEKIT_THREADS", "1")
    import torch
    torch.set_num_threads(int(os.environ["PRUNEKIT_THREADS"]))

    from prunekit.experiments.sweep import comparable, run_grid
    grid = {"models": [a.model], "allocations": ["uniform", "owl", "alphapruning"], "metrics": ["wanda"],
            "sparsities": [float(s) for s in a.sparsities.split(",")], "seeds": list(range(a.seeds)),
            "calibration": {"dataset": "c4", "samples": a.calib_samples, "seqlen": a.calib_seqlen},
            "evaluation": {"datasets": ["wikitext2"], "seqlen": 256, "windows": a.eval_windows}}
    with tempfile.TemporaryDirectory() as d:
        from prunekit.core.loading import load_model
        load_model(a.model).close()  # build/dequantise once so neither path pays for it
        t0 = time.perf_counter()
        serial = run_grid(grid, Path(d) / "serial.jsonl", progress=False)
        t_serial = time.perf_counter() - t0

        import ray

        from prunekit.experiments.sweep import ray_init
        t0 = time.perf_counter()
        ray_init(num_cpus=a.num_cpus)
        t_start = time.perf_counter() - t0
        t0 = time.perf_counter()
        dist = run_grid(grid, Path(d) / "ray.jsonl", ray=True, progress=False)
        t_ray = time.perf_counter() - t0
        ray.shutdown()

    def key(df):
        return [comparable(r) for r in sorted(df.attrs["records"], key=lambda r: r["cell"])]

    n = len(serial)
    print(f"grid: {a.model}, {n} cells ({len(grid['allocations'])} allocations x {len(grid['sparsities'])} "
          f"sparsities x {a.seeds} seeds), calibration {a.calib_samples} x {a.calib_seqlen}")
    print(f"in-process: {t_serial:.1f} s, {serial.attrs['model_loads']} model load(s)")
    print(f"Ray (local, num_cpus={a.num_cpus}): {t_ray:.1f} s after a {t_start:.1f} s cluster start-up, "
          f"{dist.attrs['model_loads']} model load(s) (one per (model, seed) task)")
    cs = {k: sum(r.get("cell_seconds") or 0 for r in df.attrs["records"]) for k, df in (("s", serial), ("r", dist))}
    print(f"inside the tasks: model load {serial.attrs['load_s']:.1f} s in-process vs {dist.attrs['load_s']:.1f} s "
          f"summed over Ray tasks; cell compute summed {cs['s']:.1f} s vs {cs['r']:.1f} s")
    print(f"overhead Ray / in-process: {t_ray / t_serial:.2f} (excluding start-up), "
          f"{(t_ray + t_start) / t_serial:.2f} (including)")
    print(f"records identical (timings aside): {key(serial) == key(dist)}; "
          f"all ok: {bool((serial.status == 'ok').all() and (dist.status == 'ok').all())}")


if __name__ == "__main__":
    main()
