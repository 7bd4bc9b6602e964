"""SV-NUP benchmark: sliding-window vs Monte-Carlo Shapley on the real layer game.

    python -m benchmarks.shapley [--heldout-samples 2 --heldout-seqlen 64 --window 5 ...]

On smollm2-135m (30 players), Wanda at 70 %:
1. seconds of one plain forward over the held-out set (median of 3);
2. a long Monte-Carlo reference (cached on disk, keyed by its options);
3. sliding window (w=5; blocks outside the window pruned as in the spec, and the [I] variant
   background='both'): distinct evaluations, wall time, Spearman vs the reference;
4. Monte-Carlo with an independent seed, run until Spearman ≥ threshold vs the reference (or until it
   has spent 10× the sliding window's evaluations, which already decides the goal);
5. goals: SW evaluations ≤ 0.1 × MC evaluations to reach the threshold; seconds per coalition
   evaluation ÷ plain forward ≤ 1.1.
Defaults keep it around 10 min on a free 2-core CPU (held-out 1 × 32 tokens: the estimators are
compared on the same game, so the held-out size only sets the cost per evaluation).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.shapley", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--target", type=float, default=0.7)
    ap.add_argument("--metric", default="wanda", help="base metric of the game: wanda, magnitude, sparsegpt")
    ap.add_argument("--calib-dataset", default="c4")
    ap.add_argument("--calib-samples", type=int, default=8)
    ap.add_argument("--calib-seqlen", type=int, default=128)
    ap.add_argument("--heldout-samples", type=int, default=1)
    ap.add_argument("--heldout-seqlen", type=int, default=32)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--ref-permutations", type=int, default=40)
    ap.add_argument("--ref-seed", type=int, default=12345)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--mc-max-evals", type=int, default=None, help="default: 10 x the sliding window's evaluations")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--no-cache", action="store_true", help="recompute the Monte-Carlo reference")
    args = ap.parse_args(argv)

    from prunekit.allocation.svnup.game import LayerGame, heldout_data
    from prunekit.allocation.svnup.shapley import monte_carlo, sliding_window
    from prunekit.core.data import calibration_data
    from prunekit.core.models import load_model
    from prunekit.experiments.correlation import spearman
    from prunekit.experiments.svnup import evaluations_to_reach
    from prunekit.scoring.statistics import Statistics

    if args.threads:
        torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    model, tok = load_model(args.model)
    calib = calibration_data(args.calib_dataset, tok, args.calib_samples, args.calib_seqlen, args.seed)
    stats = Statistics(model, calib, cache=not args.no_cache, progress=False)
    stats.tokenizer = tok
    held = heldout_data(stats, args.heldout_samples, args.heldout_seqlen)
    game = LayerGame(model, calib.input_ids, held, args.target, args.metric, progress=False)
    n = game.n
    print(f"model {args.model}: {n} players; held-out {tuple(held.input_ids.shape)}; pruned blocks built in "
          f"{game.build_seconds:.1f} s ({args.metric} @ {args.target:.0%}); torch threads {torch.get_num_threads()}")

    plain = []
    for _ in range(3):
        t0 = time.perf_counter()
        game.plain_forward_nll()
        plain.append(time.perf_counter() - t0)
    plain_s = statistics.median(plain)
    print(f"plain forward over the held-out set: {plain_s:.3f} s (median of 3)")

    def reference():
        game.clear_cache()
        r = monte_carlo(game, n, args.ref_permutations, args.ref_seed, progress=True)
        half = r.trace[args.ref_permutations // 2 - 1]
        first = half["values"]  # split-half: first half vs second half of the permutations
        second = (r.values * args.ref_permutations - first * half["permutations"]) / (args.ref_permutations - half["permutations"])
        return {"values": torch.tensor(r.values), "stderr": torch.tensor(r.stderr),
                "evaluations": torch.tensor([r.evaluations]), "seconds": torch.tensor([r.seconds]),
                "split_half": torch.tensor([spearman(first, second)])}

    t0 = time.perf_counter()
    ref_d = stats.cached("svnup_benchmark_reference", reference, target=args.target, metric=args.metric,
                         heldout=held.key(), permutations=args.ref_permutations, seed=args.ref_seed)
    ref, ref_se = ref_d["values"].numpy(), ref_d["stderr"].numpy()
    cached = time.perf_counter() - t0 < 0.5 * float(ref_d["seconds"][0])
    print(f"reference: Monte-Carlo {args.ref_permutations} permutations, {int(ref_d['evaluations'][0])} evaluations, "
          f"{float(ref_d['seconds'][0]):.0f} s{' (read from cache)' if cached else ''}; "
          f"median stderr / sd(phi) = {np.median(ref_se) / ref.std():.3f}; split-half Spearman "
          f"(first vs second half of its permutations) = {float(ref_d['split_half'][0]):.3f}")
    print("reference phi:", np.array2string(ref, precision=4, max_line_width=120))

    game.clear_cache()
    b0 = game.blocks_run
    sw = sliding_window(game, n, args.window, progress=True)  # spec: blocks outside the window pruned
    sw_blocks = (game.blocks_run - b0) / (sw.evaluations * n)
    rho_sw = spearman(sw.values, ref)
    print(f"sliding window w={args.window}: {sw.evaluations} evaluations, {sw.seconds:.1f} s, "
          f"Spearman {rho_sw:.3f}, {sw.seconds / sw.evaluations:.3f} s/eval, {sw_blocks:.2f} blocks run per eval / L")
    game.clear_cache()
    sw2 = sliding_window(game, n, args.window, background="both", progress=True)
    rho_sw2 = spearman(sw2.values, ref)
    print(f"sliding window w={args.window}, background='both' (mean of pruned and dense outside the window): "
          f"{sw2.evaluations} evaluations, {sw2.seconds:.1f} s, Spearman {rho_sw2:.3f}")

    cap = args.mc_max_evals or 10 * sw.evaluations
    game.clear_cache()
    b0 = game.blocks_run
    mc = monte_carlo(game, n, 10 ** 6, args.seed, progress=True,
                     until=lambda t: spearman(t["values"], ref) >= args.threshold or t["evaluations"] >= cap)
    mc_blocks = (game.blocks_run - b0) / (mc.evaluations * n)
    hit = evaluations_to_reach(mc.trace, ref, args.threshold)
    if hit:
        print(f"Monte-Carlo (seed {args.seed}) reached Spearman {hit['spearman']:.3f} >= {args.threshold} after "
              f"{hit['permutations']} permutations = {hit['evaluations']} evaluations, {hit['seconds']:.1f} s")
    else:
        print(f"Monte-Carlo (seed {args.seed}) did NOT reach Spearman {args.threshold} within {mc.evaluations} "
              f"evaluations ({mc.options['n_permutations']} permutations, {mc.seconds:.1f} s); final Spearman "
              f"{spearman(mc.values, ref):.3f}")
    print(f"Monte-Carlo cost: {mc.seconds / mc.evaluations:.3f} s/eval, {mc_blocks:.2f} blocks run per eval / L")

    mc_evals = hit["evaluations"] if hit else mc.evaluations
    ratio_evals = sw.evaluations / mc_evals
    per_eval = (sw.seconds + sw2.seconds + mc.seconds) / (sw.evaluations + sw2.evaluations + mc.evaluations)
    ratio_cost = per_eval / plain_s
    sw_ok = rho_sw >= args.threshold
    print()
    print(f"GOAL 1  SW evaluations / MC evaluations to Spearman>={args.threshold}: "
          f"{sw.evaluations}/{mc_evals}{'' if hit else '+'} = {ratio_evals:.3f}{'' if hit else ' (upper bound)'} "
          f"(goal <= 0.1; SW itself {'reaches' if sw_ok else 'does NOT reach'} the threshold: {rho_sw:.3f}) -> "
          f"{'MET' if sw_ok and ratio_evals <= 0.1 else 'NOT MET'}")
    print(f"        background='both': {sw2.evaluations}/{mc_evals} = {sw2.evaluations / mc_evals:.3f}, Spearman "
          f"{rho_sw2:.3f} ({'reaches' if rho_sw2 >= args.threshold else 'does NOT reach'} the threshold)")
    print(f"GOAL 2  seconds per coalition evaluation / plain forward: {per_eval:.3f}/{plain_s:.3f} = "
          f"{ratio_cost:.2f} (goal <= 1.1) -> {'MET' if ratio_cost <= 1.1 else 'NOT MET'}")
    print(f"total wall time {time.perf_counter() - t_all:.0f} s")
    out = {"players": n, "heldout_shape": list(held.input_ids.shape), "plain_forward_s": plain_s,
           "reference": {"permutations": args.ref_permutations, "evaluations": int(ref_d["evaluations"][0]),
                         "seconds": float(ref_d["seconds"][0]), "cached": cached,
                         "split_half_spearman": float(ref_d["split_half"][0])},
           "sliding_window": {"window": args.window, "evaluations": sw.evaluations, "seconds": sw.seconds,
                              "spearman": rho_sw, "blocks_per_eval_over_L": sw_blocks},
           "sliding_window_both": {"window": args.window, "evaluations": sw2.evaluations, "seconds": sw2.seconds,
                                   "spearman": rho_sw2},
           "monte_carlo": {"reached": bool(hit), "evaluations": mc_evals,
                           "seconds": hit["seconds"] if hit else mc.seconds,
                           "blocks_per_eval_over_L": mc_blocks},
           "sw_over_mc_evaluations": ratio_evals, "eval_over_plain_forward": ratio_cost}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
