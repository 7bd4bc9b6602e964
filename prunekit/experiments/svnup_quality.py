"""SV-NUP's quality per cost: the default plan against the plan of a long Monte-Carlo reference.

For each calibration seed one layer game is played (Wanda at the target, the method's default
held-out set, which the seed also moves) and estimated twice: with the method's defaults and with a
reference estimator (by default 40 Monte-Carlo permutations). Both estimates go through the same
mapping to a plan, each plan is pruned with Wanda and evaluated on the same WikiText-2 windows. The
quality is perplexity(default plan) ÷ perplexity(reference plan): 1 means the cheap estimate loses
nothing (goal ≤ 1.05). The cost is each estimate's distinct coalitions and seconds.

    python -m prunekit.experiments.svnup_quality --model smollm2-135m --seeds 0,1,2 --out docs/data/regime/svnup_quality.json

Resumable: each (seed, estimator) run is written (atomically) when done and read back on a rerun.
"""
from __future__ import annotations

from pathlib import Path

from prunekit.errors import PrunekitError, guarded
from prunekit.experiments.correlation import spearman
from prunekit.utils import atomic_write_json

REFERENCES = ("monte_carlo", "exact")


def reference_options(reference: str, permutations: int, seed: int) -> dict:
    """The reference estimator's SV-NUP options (the mapping and the game stay the defaults)."""
    return {"estimator": reference, **({"n_permutations": permutations, "seed": seed}
                                       if reference == "monte_carlo" else {})}


def plan_run(session, target: float, options: dict) -> dict:
    """One SV-NUP plan pruned with Wanda and evaluated: the fields the study keeps."""
    rec = session.run("svnup", "wanda", target, **options)
    ex = rec["plan_extras"]
    return {"options": options, "ppl": rec["perplexity"]["wikitext2"], "values": [float(x) for x in ex["shapley"]],
            "evaluations": int(ex["shapley_evaluations"]), "seconds": float(ex["shapley_seconds"]),
            "planned_sparsity": rec["planned_sparsity"], "heldout": ex["heldout"]}


def summarise(entry: dict) -> dict | None:
    """Quality (default ppl ÷ reference ppl), rank agreement and cost ratio of one seed's pair."""
    d, r = entry.get("default"), entry.get("reference")
    if not d or not r:
        return None
    return {"quality": d["ppl"] / r["ppl"], "spearman": spearman(d["values"], r["values"]),
            "evaluations_ratio": d["evaluations"] / r["evaluations"], "seconds_ratio": d["seconds"] / r["seconds"]}


def _preflight(a) -> None:
    """Every argument checked before the model loads."""
    from prunekit.core.loading import peek_model
    from prunekit.experiments.regime import _numbers
    from prunekit.utils import check_writable
    check_writable(a.out, "--out")
    a.seeds = _numbers(a.seeds, "--seeds")
    if not 0.0 < a.sparsity < 1.0:
        raise PrunekitError(f"--sparsity {a.sparsity} must lie in (0, 1)")
    if a.reference not in REFERENCES:
        raise PrunekitError(f"--reference '{a.reference}': choose from {', '.join(REFERENCES)}")
    if a.permutations < 1:
        raise PrunekitError(f"--permutations {a.permutations} must be >= 1")
    for flag in ("calib_samples", "calib_seqlen"):
        if getattr(a, flag) < 1:
            raise PrunekitError(f"--{flag.replace('_', '-')} {getattr(a, flag)} must be >= 1")
    from prunekit.allocation import spec
    info = peek_model(a.model)
    spec("svnup").check_options(reference_options(a.reference, a.permutations, a.ref_seed), info.num_blocks,
                                a.sparsity)


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m prunekit.experiments.svnup_quality")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--sparsity", type=float, default=0.7)
    ap.add_argument("--reference", default="monte_carlo", help="monte_carlo | exact (at most 16 blocks)")
    ap.add_argument("--permutations", type=int, default=40, help="Monte-Carlo permutations of the reference")
    ap.add_argument("--ref-seed", type=int, default=12345)
    ap.add_argument("--calib-samples", type=int, default=8)
    ap.add_argument("--calib-seqlen", type=int, default=256)
    ap.add_argument("--out", required=True)
    return guarded("svnup_quality", run, ap.parse_args(argv))


def run(a) -> int:
    """Both plans of every seed, resuming from --out (a plan already recorded is read back)."""
    from prunekit.experiments.regime import _load, _session
    out = Path(a.out)
    _preflight(a)
    doc = _load(out)
    ref = reference_options(a.reference, a.permutations, a.ref_seed)
    sess = None
    for seed in a.seeds:
        key = f"{a.model}|s{a.sparsity:g}|seed{seed}|c4 {a.calib_samples}x{a.calib_seqlen}|{a.reference}" + (
            f"{a.permutations},{a.ref_seed}" if a.reference == "monte_carlo" else "")
        entry = doc["entries"].setdefault(key, {})
        for name, opts in (("default", {}), ("reference", ref)):
            if name in entry:
                continue
            if sess is None:
                sess = _session(a.model, seed, calib_samples=a.calib_samples, calib_seqlen=a.calib_seqlen)
            elif sess.seed != seed:
                sess.reseed(seed)
            entry[name] = plan_run(sess, a.sparsity, opts)
            entry["settings"] = {"dtype": str(sess.model.dtype), "calibration": f"c4 {a.calib_samples} x "
                                 f"{a.calib_seqlen}, seed {seed}", "eval": "wikitext2 16 x 1024"}
            atomic_write_json(out, doc)
            print(f"{key}: {name}: ppl {entry[name]['ppl']:.2f}, {entry[name]['evaluations']} evaluations, "
                  f"{entry[name]['seconds']:.0f} s", flush=True)
        entry["summary"] = summarise(entry)
        atomic_write_json(out, doc)
        print(f"{key}: {entry['summary']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
