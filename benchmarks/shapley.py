"""SV-NUP benchmark: Shapley estimators on the real layer game, and the P5 goals.

    python -m benchmarks.shapley [--model smollm2-135m --heldout-samples 1 --heldout-seqlen 64 ...]
    python -m benchmarks.shapley --p5-wall --wall-calib-samples 32 --wall-calib-seqlen 512

Estimator part (Wanda at 70 %, 30 players on smollm2-135m, 18 on gemma3-270m):
1. seconds of one plain forward over the held-out set (median of 3);
2. a long Monte-Carlo reference (cached on disk, keyed by its options) and its split-half Spearman;
3. the default estimator of ``--allocation svnup`` (the method's defaults) and the sliding-window
   variants w ∈ {1, 3, 5} × background ∈ {absent, present, both}: distinct evaluations, wall time,
   Spearman vs the reference;
   (``--random-backgrounds K``, ``--single-permutations K``: estimators at n + 1 evaluations, the P5 budget);
4. Monte-Carlo with an independent seed, run until Spearman ≥ threshold vs the reference;
5. held-out variance: the default estimator on a second, disjoint held-out draw of the same size
   (Spearman between the two draws);
6. P5 (evaluations): default-estimator evaluations ÷ MC evaluations to reach the threshold ≤ 0.1.
The estimators are compared on the same game, so the held-out size only sets the cost per evaluation.

``--heldout-shapes 8x512,2x2048``: seconds of one game evaluation per held-out shape (the coalition
phase's cost ratio between two default held-out sets).

``--p5-wall``: wall of ``Session.plan('svnup', 0.7)`` with the method's defaults (no caches) ÷ wall of
one uniform Wanda prune at the same calibration (goal ≤ 10; the CLI default is 128 × 2048).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch


def _defaults() -> dict:
    from prunekit.allocation import spec
    return {k: o.default for k, o in spec("svnup").options.items()}


def p5_wall(args) -> dict:
    """Wall of the default ``--allocation svnup`` plan ÷ one Wanda prune, same calibration, no caches."""
    from prunekit.experiments.session import Session
    from prunekit.scoring.statistics import Statistics
    sess = Session(model_name=args.model, calib_samples=args.wall_calib_samples, calib_seqlen=args.wall_calib_seqlen,
                   eval_datasets=(), dtype=args.dtype, progress=not args.quiet)
    t0 = time.perf_counter()
    rec = sess.run("uniform", "wanda", args.target, evaluate=False)
    wanda_s = time.perf_counter() - t0
    sess.restore()
    sess.stats = Statistics(sess.runtime, sess.calib, cache=False, batch_size=sess.batch_size,
                            progress=not args.quiet)
    t0 = time.perf_counter()
    plan = sess.plan("svnup", args.target)
    svnup_s = time.perf_counter() - t0
    r = svnup_s / wanda_s
    d = _defaults()
    print(f"P5 wall: default --allocation svnup ({d['estimator']}, w={d['window']}, background={d['background']}, "
          f"held-out {plan.extras['heldout']}) at calibration {args.wall_calib_samples} x "
          f"{args.wall_calib_seqlen}, dtype {rec['dtype']}: {svnup_s:.1f} s ({plan.extras['shapley_evaluations']} "
          f"evaluations) / one Wanda prune {wanda_s:.1f} s = {r:.2f} (goal <= 10) -> {'MET' if r <= 10 else 'NOT MET'}")
    return {"calib": [args.wall_calib_samples, args.wall_calib_seqlen], "svnup_s": svnup_s, "wanda_s": wanda_s,
            "ratio": r, "evaluations": plan.extras["shapley_evaluations"], "dtype": rec["dtype"]}


def heldout_shape_cost(args) -> dict:
    """Seconds of one layer-game evaluation (every block and the head, state caches cleared) on
    held-out sets of the same game in different shapes, interleaved round by round (medians). The
    estimator evaluates the same coalitions in the same order whatever the shape, so the coalition
    phase of the plan scales by these ratios (the pruned-block pass depends on the calibration only)."""
    from prunekit.allocation.svnup.game import LayerGame, heldout_data
    from prunekit.core.data import calibration_data
    from prunekit.core.loading import load_model
    from prunekit.scoring.statistics import Statistics
    rt = load_model(args.model, dtype=args.dtype)
    calib = calibration_data(args.calib_dataset, rt.tokenizer, args.calib_samples, args.calib_seqlen, args.seed)
    stats = Statistics(rt, calib, cache=False, progress=False)
    shapes = [tuple(int(x) for x in sh.split("x")) for sh in args.heldout_shapes.split(",")]
    games = {sh: LayerGame(rt, calib.input_ids, heldout_data(stats, *sh), args.target, args.metric, progress=False)
             for sh in shapes}
    secs = {sh: [] for sh in shapes}
    for _ in range(args.rounds):
        for sh, g in games.items():
            for mask in (0, g.full):  # all blocks pruned, all dense: two whole forwards
                g.clear_cache()
                t0 = time.perf_counter()
                g.nll(g.dense_set(mask))
                secs[sh].append(time.perf_counter() - t0)
    med = {sh: statistics.median(v) for sh, v in secs.items()}
    base = shapes[-1]
    for sh in shapes:
        print(f"held-out {sh[0]} x {sh[1]}: {med[sh]:.2f} s per evaluation (median of {len(secs[sh])}), "
              f"{med[sh] / med[base]:.3f} x the {base[0]} x {base[1]} set")
    return {f"{a}x{b}": med[(a, b)] for a, b in shapes}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.shapley", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="fp32", help="compute dtype of the game (the reference is cached per dtype)")
    ap.add_argument("--target", type=float, default=0.7)
    ap.add_argument("--metric", default="wanda", help="base metric of the game: wanda, magnitude, sparsegpt")
    ap.add_argument("--calib-dataset", default="c4")
    ap.add_argument("--calib-samples", type=int, default=8)
    ap.add_argument("--calib-seqlen", type=int, default=128)
    ap.add_argument("--heldout-samples", type=int, default=1)
    ap.add_argument("--heldout-seqlen", type=int, default=64)
    ap.add_argument("--windows", default="1,3,5")
    ap.add_argument("--backgrounds", default="absent,present,both")
    ap.add_argument("--skip-default", action="store_true", help="do not add the default estimator to the rows")
    ap.add_argument("--skip-heldout-variance", action="store_true")
    ap.add_argument("--ref-permutations", type=int, default=40)
    ap.add_argument("--ref-seed", type=int, default=12345)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--mc-max-evals", type=int, default=600)
    ap.add_argument("--random-backgrounds", type=int, default=0,
                    help="also w=1 on K random half-dense backgrounds (seeds 0..K-1), n + 1 evaluations each")
    ap.add_argument("--single-permutations", type=int, default=0,
                    help="also K one-permutation Monte-Carlo estimates (seeds 100..), n + 1 evaluations each")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--no-cache", action="store_true", help="recompute the Monte-Carlo reference")
    ap.add_argument("--p5-wall", action="store_true", help="only the P5 wall ratio (see the module doc)")
    ap.add_argument("--wall-calib-samples", type=int, default=128)
    ap.add_argument("--wall-calib-seqlen", type=int, default=2048)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--heldout-shapes", default=None,
                    help="e.g. 8x512,2x2048: only the seconds of one evaluation per held-out shape (see heldout_shape_cost)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.heldout_shapes:
        out = heldout_shape_cost(args)
        print(json.dumps(out))
        return out
    if args.p5_wall:
        out = p5_wall(args)
        print(json.dumps(out))
        return out

    from prunekit.allocation.svnup.game import LayerGame, heldout_data
    from prunekit.allocation.svnup.shapley import monte_carlo, sliding_window
    from prunekit.core.data import calibration_data
    from prunekit.core.devices import dtype_name
    from prunekit.core.loading import load_model
    from prunekit.experiments.correlation import spearman as _spearman
    from prunekit.experiments.svnup import evaluations_to_reach
    from prunekit.scoring.statistics import Statistics

    t_all = time.perf_counter()
    rt = load_model(args.model, dtype=args.dtype)  # one Runtime for the statistics and both games
    tok = rt.tokenizer
    calib = calibration_data(args.calib_dataset, tok, args.calib_samples, args.calib_seqlen, args.seed)
    stats = Statistics(rt, calib, cache=not args.no_cache, progress=False)
    held = heldout_data(stats, args.heldout_samples, args.heldout_seqlen)
    game = LayerGame(rt, calib.input_ids, held, args.target, args.metric, progress=False)
    n = game.n
    print(f"model {args.model} ({dtype_name(rt.dtype)}): {n} players; held-out {tuple(held.input_ids.shape)}; "
          f"pruned blocks built in {game.build_seconds:.1f} s ({args.metric} @ {args.target:.0%}); "
          f"torch threads {torch.get_num_threads()}")

    plain = []
    for _ in range(3):
        t0 = time.perf_counter()
        game.plain_forward_nll()
        plain.append(time.perf_counter() - t0)
    plain_s = statistics.median(plain)
    print(f"plain forward over the held-out set: {plain_s:.3f} s (median of 3)")

    def reference():
        game.clear_cache()
        r = monte_carlo(game, n, args.ref_permutations, args.ref_seed, progress=not args.quiet)
        half = r.trace[args.ref_permutations // 2 - 1]
        first = half["values"]  # split-half: first half vs second half of the permutations
        second = ((r.values * args.ref_permutations - first * half["permutations"])
                  / (args.ref_permutations - half["permutations"]))
        return {"values": torch.tensor(r.values), "stderr": torch.tensor(r.stderr),
                "evaluations": torch.tensor([r.evaluations]), "seconds": torch.tensor([r.seconds]),
                "split_half": torch.tensor([_spearman(first, second)])}

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

    d = _defaults()
    print(f"\ndefault estimator of --allocation svnup: {d['estimator']}, window={d['window']}, "
          f"background={d['background']}")
    rows = {}
    variants = [(int(w), bg) for w in args.windows.split(",") for bg in args.backgrounds.split(",")]
    if (d["window"], d["background"]) not in variants and not args.skip_default:
        variants.insert(0, (d["window"], d["background"]))
    print(f"{'estimator':<34}{'evaluations':>12}{'seconds':>9}{'Spearman':>10}")
    for w, bg in variants:
        game.clear_cache()
        r = sliding_window(game, n, w, background=bg, progress=False)
        rows[(w, bg)] = {"window": w, "background": bg, "evaluations": r.evaluations, "seconds": r.seconds,
                         "spearman": _spearman(r.values, ref), "values": r.values}
        tag = " (default)" if (w, bg) == (d["window"], d["background"]) else ""
        print(f"{f'sliding window w={w} {bg}{tag}':<34}{r.evaluations:>12}{r.seconds:>9.1f}"
              f"{rows[(w, bg)]['spearman']:>10.3f}", flush=True)

    # estimators at about n + 1 evaluations, the budget P5's 0.1 leaves (docs/benchmarks.md, P5)
    rng_rows = []
    for s in range(args.random_backgrounds):
        bg = int(sum(1 << int(i) for i in np.flatnonzero(np.random.default_rng(s).random(n) < 0.5)))
        game.clear_cache()
        r = sliding_window(game, n, 1, background=bg, progress=False)
        rng_rows.append({"estimator": f"w=1 random half (seed {s})", "evaluations": r.evaluations,
                         "spearman": _spearman(r.values, ref)})
    for s in range(args.single_permutations):
        game.clear_cache()
        r = monte_carlo(game, n, 1, 100 + s)
        rng_rows.append({"estimator": f"Monte-Carlo, one permutation (seed {100 + s})", "evaluations": r.evaluations,
                         "spearman": _spearman(r.values, ref)})
    for row in rng_rows:
        print(f"{row['estimator']:<44}{row['evaluations']:>6}{row['spearman']:>10.3f}", flush=True)

    if args.mc_max_evals <= 0:  # estimator rows only
        print(json.dumps({"model": args.model, "rows": [{k: v for k, v in r.items() if k != "values"}
                                                        for r in rows.values()], "budget_rows": rng_rows}))
        return rows
    game.clear_cache()
    def until(t) -> bool:
        return _spearman(t["values"], ref) >= args.threshold or t["evaluations"] >= args.mc_max_evals

    mc = monte_carlo(game, n, 10 ** 6, args.seed, progress=not args.quiet, until=until)
    hit = evaluations_to_reach(mc.trace, ref, args.threshold)
    if hit:
        print(f"Monte-Carlo (seed {args.seed}) reached Spearman {hit['spearman']:.3f} >= {args.threshold} after "
              f"{hit['permutations']} permutations = {hit['evaluations']} evaluations, {hit['seconds']:.1f} s")
    else:
        print(f"Monte-Carlo (seed {args.seed}) did NOT reach Spearman {args.threshold} within {mc.evaluations} "
              f"evaluations ({mc.options['n_permutations']} permutations); "
              f"final Spearman {_spearman(mc.values, ref):.3f}")
    mc_evals = hit["evaluations"] if hit else mc.evaluations

    game.restore()  # dense again: the second game below must be built on the dense weights

    # held-out variance: the default estimator on a second disjoint held-out draw of the same size
    dflt = rows.get((d["window"], d["background"]))
    rho_draws = float("nan")
    if dflt is not None and not args.skip_heldout_variance:
        held2 = calibration_data(held.dataset, tok, args.heldout_samples, args.heldout_seqlen, calib.seed + 2,
                                 exclude=calib)
        game2 = LayerGame(rt, calib.input_ids, held2, args.target, args.metric, progress=False)
        with game2:
            r2 = sliding_window(game2, n, d["window"], background=d["background"])
        rho_draws = _spearman(r2.values, dflt["values"])
        print(f"held-out variance: default estimator on two disjoint held-out draws of {tuple(held.input_ids.shape)}: "
              f"Spearman {rho_draws:.3f} between the draws; "
              f"the second draw vs the reference {_spearman(r2.values, ref):.3f}")
    if dflt is None:
        dflt = max(rows.values(), key=lambda r: r["spearman"])
        print(f"(default estimator not run; P5 below uses the best row: w={dflt['window']} {dflt['background']})")

    ratio = dflt["evaluations"] / mc_evals
    ok = dflt["spearman"] >= args.threshold and ratio <= 0.1
    print(f"\nP5 (evaluations): default estimator {dflt['evaluations']} / Monte-Carlo {mc_evals}{'' if hit else '+'} "
          f"to Spearman>={args.threshold} = {ratio:.3f} (goal <= 0.1), default Spearman {dflt['spearman']:.3f} -> "
          f"{'MET' if ok else 'NOT MET'}")
    print(f"total wall time {time.perf_counter() - t_all:.0f} s")
    out = {"model": args.model, "dtype": dtype_name(rt.dtype), "players": n,
           "heldout_shape": list(held.input_ids.shape), "plain_forward_s": plain_s,
           "reference": {"permutations": args.ref_permutations, "evaluations": int(ref_d["evaluations"][0]),
                         "seconds": float(ref_d["seconds"][0]), "cached": cached,
                         "split_half_spearman": float(ref_d["split_half"][0])},
           "sliding_window": [{k: v for k, v in r.items() if k != "values"} for r in rows.values()],
           "budget_rows": rng_rows, "monte_carlo": {"reached": bool(hit), "evaluations": mc_evals},
           "heldout_draws_spearman": rho_draws, "p5_evaluations_ratio": ratio, "p5_met": ok}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
