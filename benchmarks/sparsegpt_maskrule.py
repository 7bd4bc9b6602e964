"""Which part of the reference SparseGPT mask-count rule moves SmolLM2's pruned perplexity?

The reference (and llm-compressor) prunes, per 128-column block, every score ``<= sorted[int(n·s)]``:
one weight more than the target plus any ties at the threshold; prunekit prunes exactly round(n·s).
This runs prunekit's own pipeline (``prune_model``, one calibration set per seed, the same
WikiText-2 windows) with the per-block selection swapped for variants that separate the pieces:

    exact+D   exactly round(n·s)+D lowest scores (D = -1, 0, +1, +2; topk, ties broken arbitrarily)
    ref+D     every score <= sorted[int(n·s)+D]  (D = 0 is the reference rule; D = -1: exact + ties)

and optionally perturbs the damping (``--percdamp``) to measure how far any tiny change moves
the perplexity. Prints one line per (seed, variant): perplexity, realised sparsity, extra weights
pruned over exact, and the ties counted at each block's threshold.

    python -m benchmarks.sparsegpt_maskrule --seeds 0,1,2 --variants exact+0,ref+0,exact+1 [--dtype fp32]
"""
from __future__ import annotations

import argparse
import re
import time

import torch


def variant_mask(name: str, tally: dict):
    """A replacement for ``_global_mask(score, s)`` implementing the variant ``name``."""
    from prunekit.solvers.masks import prune_count
    mt = re.fullmatch(r"(exact|ref)([+-]\d+)", name)
    if mt is None:
        raise SystemExit(f"bad variant '{name}'; write exact+0, ref-1, ...")
    rule, d = mt.group(1), int(mt.group(2))

    def mask(score: torch.Tensor, s: float) -> torch.Tensor:
        flat = score.reshape(-1)
        n = flat.numel()
        k0 = prune_count(n, s)
        srt = torch.sort(flat)[0]
        t = srt[min(max(k0 - 1, 0), n - 1)]       # the k0-th smallest score
        tally["ties"] += int((flat == t).sum()) - 1
        tally["groups"] += 1
        if rule == "exact":
            k = min(max(k0 + d, 0), n)
            m = torch.zeros(n, dtype=torch.bool, device=flat.device)
            if k:
                m[torch.topk(flat, k, largest=False)[1]] = True
        else:  # reference: every score <= sorted[int(n·s) + d]
            idx = min(max(int(n * s) + d, 0), n - 1)
            m = flat <= srt[idx]
        tally["extra"] += int(m.sum()) - k0
        return m.reshape(score.shape)
    return mask


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default="exact+0,ref+0,exact+1,exact-1,ref-1")
    ap.add_argument("--percdamp", default="0.01")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--calib-samples", type=int, default=8)
    ap.add_argument("--calib-seqlen", type=int, default=256)
    ap.add_argument("--eval-seqlen", type=int, default=1024)
    ap.add_argument("--eval-windows", type=int, default=4)
    ap.add_argument("--dtype", default="fp32")
    a = ap.parse_args(argv)

    import prunekit.solvers.sparsegpt as sg
    from prunekit.core.data import calibration_data
    from prunekit.core.loading import load_model
    from prunekit.core.snapshot import weight_snapshot
    from prunekit.evaluation.perplexity import perplexity
    from prunekit.solvers.prune import prune_model

    original = sg._global_mask
    rt = load_model(a.model, dtype=a.dtype)
    print(f"model {a.model} {a.dtype}; C4 {a.calib_samples}x{a.calib_seqlen}; wikitext2 "
          f"{a.eval_windows}x{a.eval_seqlen}; sparsity {a.sparsity}", flush=True)
    with weight_snapshot(rt) as dense:  # each variant prunes the dense weights
        for seed in (int(s) for s in a.seeds.split(",")):
            calib = calibration_data("c4", rt.tokenizer, a.calib_samples, a.calib_seqlen, seed)
            for pd in (float(p) for p in a.percdamp.split(",")):
                for v in a.variants.split(","):
                    dense.restore()
                    tally = {"ties": 0, "groups": 0, "extra": 0}
                    sg._global_mask = variant_mask(v, tally)
                    t0, c0 = time.perf_counter(), time.process_time()
                    try:
                        rep = prune_model(rt, calib.input_ids, a.sparsity, "sparsegpt", percdamp=pd, progress=False)
                    finally:
                        sg._global_mask = original
                    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                    p = perplexity(rt, "wikitext2", a.eval_seqlen, a.eval_windows, progress=False)["perplexity"]
                    print(f"seed {seed} percdamp {pd:.4f} {v:8} ppl {p:9.3f}  sparsity {rep['global_sparsity']:.6f}  "
                          f"extra {tally['extra']:6d} over {tally['groups']} blocks  "
                          f"ties-at-threshold {tally['ties']:5d}  prune {wall:.0f} s wall {cpu:.0f} s cpu", flush=True)

if __name__ == "__main__":
    main()
