"""Benchmark: MRP allocation time relative to one Wanda pruning pass (goal ≤ 0.2 without refresh).

    python -m benchmarks.mrp [--model smollm2-135m] [--sparsity 0.7] [--refresh 10] [--out FILE]

Reports, on a small calibration set (default 8 × 128 tokens):
- ``stats_s``: the dense Wanda-statistics pass (cold, no disk cache) — shared with OWL, Wanda
  itself and every other method, so it is not charged to MRP;
- ``mrp_s``: MRP allocation with warm statistics (score tables + greedy loop);
- ``mrp_loop_s``: the greedy loop alone (tables memoised);
- ``wanda_s``: one sequential Wanda pruning pass at the target sparsity;
- ``mrp_refresh_s``: MRP with a sequential re-calibration every ``--refresh`` steps.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from prunekit.allocation.registry import allocate
from prunekit.experiments.session import Session
from prunekit.scoring.statistics import Statistics
from prunekit.solvers.prune import prune_model
from prunekit.utils import atomic_write_json, versions


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sparsity", type=float, default=0.7)
    ap.add_argument("--calib-samples", type=int, default=8)
    ap.add_argument("--calib-seqlen", type=int, default=128)
    ap.add_argument("--delta", type=float, default=0.01)
    ap.add_argument("--refresh", type=int, default=10, help="steps between refreshes; 0 skips that run")
    ap.add_argument("--out", default=None, help="also write the result as JSON here")
    a = ap.parse_args(argv)

    sess = Session(a.model, calib_samples=a.calib_samples, calib_seqlen=a.calib_seqlen, progress=False)
    stats = Statistics(sess.runtime, sess.calib, cache=False, progress=False)
    res = {"model": a.model, "sparsity": a.sparsity, "calib": [a.calib_samples, a.calib_seqlen],
           "delta": a.delta, "torch_threads": torch.get_num_threads(), "versions": versions()}

    t = time.perf_counter()
    stats.wanda_norms()
    res["stats_s"] = time.perf_counter() - t
    t = time.perf_counter()
    plan = allocate("mrp", stats, a.sparsity, delta=a.delta)
    res["mrp_s"] = time.perf_counter() - t
    t = time.perf_counter()
    allocate("mrp", stats, a.sparsity, delta=a.delta)
    res["mrp_loop_s"] = time.perf_counter() - t
    res["steps"] = plan.extras["steps"]

    sess.restore()
    t = time.perf_counter()
    prune_model(sess.runtime, sess.calib.input_ids, a.sparsity, "wanda", progress=False)
    res["wanda_s"] = time.perf_counter() - t
    sess.restore()
    res["ratio_mrp_over_wanda"] = res["mrp_s"] / res["wanda_s"]
    res["ratio_cold_over_wanda"] = (res["mrp_s"] + res["stats_s"]) / res["wanda_s"]
    res["goal_met"] = res["ratio_mrp_over_wanda"] <= 0.2
    print(json.dumps({k: v for k, v in res.items() if k != "versions"}, indent=1), flush=True)

    if a.refresh:
        t = time.perf_counter()
        rp = allocate("mrp", stats, a.sparsity, delta=a.delta, refresh=a.refresh)
        res["mrp_refresh_s"] = time.perf_counter() - t
        res["refreshes"] = rp.extras["refreshes"]
        res["ratio_refresh_over_wanda"] = res["mrp_refresh_s"] / res["wanda_s"]
        res["refresh_plan_max_abs_diff"] = float(abs(rp.per_block - plan.per_block).max())
        print(json.dumps({k: res[k] for k in ("mrp_refresh_s", "refreshes", "ratio_refresh_over_wanda",
                                               "refresh_plan_max_abs_diff")}, indent=1), flush=True)
    if a.out:
        atomic_write_json(a.out, res)
    return res


if __name__ == "__main__":
    main()
