"""bf16 against fp32 on this CPU: P7 and what bf16 changes in pruned perplexity.

    python -m benchmarks.dtype [--calib-samples 8 --calib-seqlen 256 --eval-windows 4 --p7-windows 16]

1. P7: perplexity-evaluation tokens/s of the default precision (``default_precision``: 'mixed',
   bf16 autocast over fp32 weights, where the CPU computes bf16 natively) ÷ fp32 on the dense model,
   with bf16 weights beside them, wikitext2 ``--p7-windows`` × 1024, and the perplexity difference
   (goal: ratio ≥ 1.8, ppl within 1 %).
2. Wanda and SparseGPT at 50 % and 70 % (uniform) in fp32 and in bf16, one after the other per
   row (so machine load drifts hit both dtypes alike): pruned perplexity on ``--eval-windows``
   × 1024 wikitext2 windows and the prune wall; Wanda prune wall bf16 ÷ fp32.

``--split S``: only separate calibration from evaluation at Wanda sparsity S: mask agreement of the
fp32- and bf16-calibrated prunes, and each pruned model evaluated in both dtypes.
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.dtype", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--calib-samples", type=int, default=8)
    ap.add_argument("--calib-seqlen", type=int, default=256)
    ap.add_argument("--eval-windows", type=int, default=4)
    ap.add_argument("--p7-windows", type=int, default=16)
    ap.add_argument("--sparsities", default="0.5,0.7")
    ap.add_argument("--metrics", default="wanda,sparsegpt")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--split", type=float, default=None, help="only the calibration/evaluation split at this sparsity")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.split is not None:
        return split(args)

    from prunekit.core.devices import default_precision, pick_device
    from prunekit.evaluation.perplexity import perplexity
    from prunekit.experiments.session import Session

    default = default_precision(pick_device(None))
    # two models only: 'mixed' prunes exactly as fp32 (tests/test_devices.py), so it gets no prune of its
    # own; its evaluation is the fp32 runtime with bf16 autocast switched on (Runtime.eval_dtype)
    sess = {d: Session(model_name=args.model, calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen,
                       eval_seqlen=1024, eval_windows=args.eval_windows, dtype=d, progress=False)
            for d in ("fp32", "bf16")}
    print(f"model {args.model}; default precision on this machine: {default}; torch threads "
          f"{torch.get_num_threads()}; calibration c4 {args.calib_samples} x {args.calib_seqlen}; eval wikitext2 "
          f"{args.eval_windows} x 1024")

    def p7_eval(d: str, windows: int) -> dict:
        rt = sess["fp32" if d == "mixed" else d].runtime
        rt.eval_dtype = torch.bfloat16 if d == "mixed" else None
        try:
            return perplexity(rt, "wikitext2", 1024, windows, progress=False)
        finally:
            rt.eval_dtype = None

    out: dict = {"default_dtype": default, "p7": {}, "rows": []}
    evals = ["fp32", "mixed", "bf16"]
    for d in evals:  # warm-up: first forward pays one-off costs
        p7_eval(d, 1)
    p7 = {d: p7_eval(d, args.p7_windows) for d in evals}
    lo = default if default != "fp32" else "bf16"
    r = p7[lo]["tokens_per_s"] / p7["fp32"]["tokens_per_s"]
    dp = p7[lo]["perplexity"] / p7["fp32"]["perplexity"] - 1
    out["p7"] = {"windows": p7["fp32"]["windows"], "tokens_per_s": {d: p7[d]["tokens_per_s"] for d in evals},
                 "perplexity": {d: p7[d]["perplexity"] for d in evals}, "ratio": r, "ppl_rel_diff": dp}
    print("P7  dense ppl eval (" + f"{p7['fp32']['windows']} x 1024): " + "; ".join(
        f"{d} {p7[d]['tokens_per_s']:.0f} tok/s ppl {p7[d]['perplexity']:.4f}" for d in evals)
        + f"; {lo} ÷ fp32 {r:.2f} (goal >= 1.8), ppl {dp:+.3%} (goal within 1 %) -> "
        f"{'MET' if r >= 1.8 and abs(dp) <= 0.01 else 'NOT MET'}")

    print(f"\n{'metric':<10}{'sparsity':>9}{'ppl fp32':>11}{'ppl bf16':>11}{'rel diff':>10}"
          f"{'prune s fp32':>14}{'prune s bf16':>14}{'ratio':>7}")
    for metric in filter(None, args.metrics.split(",")):
        for s in (float(x) for x in args.sparsities.split(",")):
            rec = {d: sess[d].run("uniform", metric, s) for d in sess}
            ppl = {d: rec[d]["perplexity"]["wikitext2"] for d in sess}
            wall = {d: rec[d]["timings_s"]["calibrate_prune"] for d in sess}
            row = {"metric": metric, "sparsity": s, "ppl": ppl, "prune_s": wall,
                   "ppl_rel_diff": ppl["bf16"] / ppl["fp32"] - 1, "prune_ratio": wall["bf16"] / wall["fp32"],
                   "dtype_recorded": {d: rec[d]["dtype"] for d in sess}}
            out["rows"].append(row)
            print(f"{metric:<10}{s:>9.2f}{ppl['fp32']:>11.3f}{ppl['bf16']:>11.3f}{row['ppl_rel_diff']:>+10.2%}"
                  f"{wall['fp32']:>14.1f}{wall['bf16']:>14.1f}{row['prune_ratio']:>7.2f}", flush=True)
    w = [r["prune_ratio"] for r in out["rows"] if r["metric"] == "wanda"]
    if w:
        print(f"\nWanda prune wall bf16 / fp32: {', '.join(f'{x:.2f}' for x in w)}")
    print(json.dumps(out))
    return out


def split(args) -> dict:
    from prunekit.core.data import calibration_data
    from prunekit.core.loading import load_model
    from prunekit.evaluation.perplexity import perplexity
    from prunekit.solvers.prune import prune_model
    models = {}
    for d in ("fp32", "bf16"):
        # in memory (no offload): the pruned models are cast to each evaluation dtype below
        rt = load_model(args.model, dtype=d, offload="none")
        calib = calibration_data("c4", rt.tokenizer, args.calib_samples, args.calib_seqlen, 0)
        prune_model(rt, calib.input_ids, args.split, "wanda", progress=False)
        models[d] = rt
    lay = {d: rt.layout for d, rt in models.items()}
    agree = tot = 0
    for i in range(lay["fp32"].num_blocks):
        for n, a in lay["fp32"].linears(i).items():
            b = lay["bf16"].linears(i)[n]
            agree += int(((a.weight == 0) == (b.weight == 0)).sum())
            tot += a.weight.numel()
    out = {"mask_agreement": agree / tot, "ppl": {}}
    print(f"Wanda {args.split:.0%} masks, fp32- vs bf16-calibrated: {agree / tot:.4%} of entries agree", flush=True)
    for d, rt in models.items():
        for e in ("fp32", "bf16"):
            rt.model.to(torch.float32 if e == "fp32" else torch.bfloat16)
            p = perplexity(rt, "wikitext2", 1024, args.eval_windows, progress=False)["perplexity"]
            out["ppl"][f"{d}-calibrated/{e}-evaluated"] = p
            print(f"pruned with {d} calibration, evaluated in {e}: ppl {p:.2f}", flush=True)
    return out


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.0f} s")
