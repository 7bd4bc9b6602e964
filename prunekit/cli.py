"""`prunekit` console script: prune, eval, methods.

    prunekit prune --model smollm2-135m --metric wanda --sparsity 0.5 --allocation owl --owl-lambda 0.08 \\
                   --calib-dataset c4 --calib-samples 32 --calib-seqlen 512 --eval wikitext2 --out run.json
    prunekit eval  --model smollm2-135m --eval wikitext2 --eval-windows 8 --out dense.json
    prunekit methods

Allocation options are flags generated from each registered method's keyword parameters:
``--<prefix>-<param>`` (``owl`` → ``--owl-m``, ``--owl-lambda``; ``alphapruning`` → ``--alpha-epsilon``).
Every failure is one line on stderr and exit code 2; the output file is written atomically at the end.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from prunekit.errors import PrunekitError

PREFIX = {"alphapruning": "alpha", "absorption": "absorption"}
RENAME = {"lam": "lambda"}  # python-safe parameter name -> flag word


def _flag(method: str, param: str) -> str:
    return f"--{PREFIX.get(method, method)}-{RENAME.get(param, param).replace('_', '-')}"


def _parse_value(text: str, default):
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise PrunekitError(f"expected true/false, got '{text}'")
    if isinstance(default, int) and not isinstance(default, bool):
        return int(text)
    if isinstance(default, float):
        return float(text)
    if isinstance(default, dict):
        return json.loads(text)
    if default is None:
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def _metavar(opt) -> str:
    if opt.choices:
        return "{" + ",".join(map(str, opt.choices)) + "}"
    if opt.type is not None:
        return {"dict": "JSON"}.get(opt.type.__name__, opt.type.__name__.upper())
    return "VALUE"


def _add_method_flags(p: argparse.ArgumentParser) -> dict:
    from prunekit.allocation import specs
    table = {}
    g = p.add_argument_group("allocation options (per method)")
    for name, sp in sorted(specs().items()):
        for opt in sp.options.values():
            flag = _flag(name, opt.name)
            if flag in table:
                continue
            dest = f"opt__{name}__{opt.name}"
            g.add_argument(flag, dest=dest, default=None, metavar=_metavar(opt),
                           help=f"{name}: {opt.name} (default {opt.default!r})")
            table[flag] = (name, opt)
    return table


def _collect_options(args, method: str, table: dict) -> dict:
    opts = {}
    for flag, (name, prm) in table.items():
        val = getattr(args, f"opt__{name}__{prm.name}")
        if val is None:
            continue
        if name != method and not (args.absorption_correction and name == "absorption"):
            raise PrunekitError(f"{flag} belongs to allocation '{name}', not '{method}'")
        try:
            opts.setdefault(name, {})[prm.name] = _parse_value(val, prm.default)
        except ValueError:
            raise PrunekitError(f"{flag}: cannot parse '{val}'") from None
    return opts


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="alias, .gguf file, HF directory or hub id")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if available)")
    p.add_argument("--dtype", default=None, help="fp32, fp16, bf16, auto (default auto: bf16 where the GPU/CPU computes it "
                   "natively, fp16 on older GPUs, else fp32; fp32 = reference numerics)")
    p.add_argument("--eval", default="wikitext2", help="comma-separated: wikitext2,c4,ptb ('' to skip)")
    p.add_argument("--eval-seqlen", type=int, default=1024)
    p.add_argument("--eval-windows", type=int, default=None, help="at most this many windows (quick runs)")
    p.add_argument("--zero-shot", default="", help="comma-separated lm-eval tasks, e.g. boolq,rte,arc_easy")
    p.add_argument("--zero-shot-limit", type=int, default=None)
    p.add_argument("--zero-shot-batch-size", default="1",
                   help="lm-eval batch size: an integer or 'auto' (lm-eval's detection on CUDA; 8 on CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the JSON record here (atomically)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    ap = argparse.ArgumentParser(prog="prunekit", description="Layer-wise sparsity allocation for LLM pruning.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("prune", help="prune a model and evaluate it")
    _common(pr)
    pr.add_argument("--metric", default="wanda", help="magnitude, wanda, sparsegpt")
    pr.add_argument("--sparsity", type=float, default=None, help="target global sparsity in [0, 1)")
    pr.add_argument("--nm", default=None, help="N:M semi-structured pattern, e.g. 2:4 (N pruned of every M)")
    pr.add_argument("--allocation", default="uniform", help="registered allocation method (see `prunekit methods`)")
    pr.add_argument("--absorption-correction", action="store_true",
                    help="wrap the allocation with the absorption-aware correction")
    pr.add_argument("--s-min", type=float, default=0.0)
    pr.add_argument("--s-max", type=float, default=0.99)
    pr.add_argument("--calib-dataset", default="c4")
    pr.add_argument("--calib-samples", type=int, default=128)
    pr.add_argument("--calib-seqlen", type=int, default=2048)
    pr.add_argument("--batch-size", type=int, default=8, help="calibration batch size")
    pr.add_argument("--save-model", default=None, help="write the pruned model as a HF directory")
    table = _add_method_flags(pr)
    ev = sub.add_parser("eval", help="evaluate a (dense or saved) model")
    _common(ev)
    sub.add_parser("methods", help="list the registered allocation methods")
    dm = sub.add_parser("demo", help="quick dense vs pruned table on the default model")
    dm.add_argument("--model", default="smollm2-135m")
    dm.add_argument("--profile", default="quick", help="quick, cpu or paper")
    return ap, table


def _validate(args) -> None:
    from prunekit.core.data import DATASETS
    from prunekit.solvers.masks import check_sparsity_value, parse_nm
    from prunekit.solvers.prune import METRICS
    from prunekit.utils import check_writable
    for d in filter(None, args.eval.split(",")):
        if d not in DATASETS:
            raise PrunekitError(f"unknown --eval dataset '{d}'; choose from {', '.join(DATASETS)}")
    if args.out:
        check_writable(args.out)
    from prunekit.evaluation.zeroshot import resolve_batch_size
    resolve_batch_size(args.zero_shot_batch_size, "cpu")
    if args.cmd == "prune":
        if args.metric not in METRICS:
            raise PrunekitError(f"unknown metric '{args.metric}'; choose from {', '.join(METRICS)}")
        if args.calib_dataset not in DATASETS:
            raise PrunekitError(f"unknown --calib-dataset '{args.calib_dataset}'; choose from {', '.join(DATASETS)}")
        from prunekit.allocation import spec
        spec(args.allocation)
        nm = parse_nm(args.nm)
        if nm is not None:
            if args.sparsity is not None and abs(args.sparsity - nm[0] / nm[1]) > 1e-9:
                raise PrunekitError(f"--sparsity {args.sparsity} contradicts --nm {args.nm} (= {nm[0] / nm[1]})")
            args.sparsity = nm[0] / nm[1]
        if args.sparsity is None:
            raise PrunekitError("--sparsity is required (or give --nm)")
        check_sparsity_value(args.sparsity)
        if args.save_model:
            from pathlib import Path
            sm = Path(args.save_model)
            if sm.exists() and (not sm.is_dir() or any(sm.iterdir())):
                raise PrunekitError(f"--save-model {sm} exists and is not an empty directory")


def _print_summary(rec: dict) -> None:
    rows = [("model", rec["model"])]
    if "metric" in rec:
        rows += [("metric", rec["metric"]), ("allocation", rec["allocation"]),
                 ("target sparsity", f"{rec['target_sparsity']:.4f}"),
                 ("global sparsity", f"{rec['global_sparsity']:.4f}")]
    for d, v in rec.get("perplexity", {}).items():
        rows.append((f"ppl {d}", f"{v:.3f}"))
    zs = rec.get("zero_shot") or {}
    if "mean_acc" in zs:
        rows.append(("zero-shot mean acc", f"{zs['mean_acc']:.4f}"))
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")


def run(argv=None) -> dict:
    ap, table = build_parser()
    args = ap.parse_args(argv)
    if args.cmd == "methods":
        from prunekit.allocation import methods
        for name, doc in sorted(methods().items()):
            print(f"{name:<14} {doc}")
        return {}
    if args.cmd == "demo":
        return demo(args.model, args.profile)
    _validate(args)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    from prunekit import utils
    from prunekit.experiments.session import Session
    evals = tuple(filter(None, args.eval.split(",")))
    zs = list(filter(None, args.zero_shot.split(","))) or None
    t0 = time.perf_counter()
    if args.cmd == "eval":
        from prunekit.core.models import load_model
        model, tok = load_model(args.model, args.device, args.dtype)
        load_s = time.perf_counter() - t0
        from prunekit.evaluation.perplexity import perplexity
        from prunekit.solvers.prune import measure_sparsity
        utils.seed_everything(args.seed)
        from prunekit.core.models import dtype_name
        rec = {"model": args.model, "dtype": dtype_name(model.dtype), **measure_sparsity(model), "seed": args.seed}
        t1 = time.perf_counter()
        res = {d: perplexity(model, tok, d, args.eval_seqlen, args.eval_windows, progress=not args.quiet)
               for d in evals}
        rec["perplexity"] = {d: r["perplexity"] for d, r in res.items()}
        rec["tokens_evaluated"] = {d: r["tokens"] for d, r in res.items()}
        rec["tokens_per_s"] = {d: r["tokens_per_s"] for d, r in res.items()}
        rec["data_sha256"] = {f"eval:{d}": r["data_sha256"] for d, r in res.items()}
        rec["timings_s"] = {"load": load_s, "eval": time.perf_counter() - t1}
        if zs:
            from prunekit.evaluation.perplexity import zero_shot
            t2 = time.perf_counter()
            rec["zero_shot"] = zero_shot(model, tok, zs, limit=args.zero_shot_limit,
                                         batch_size=args.zero_shot_batch_size)
            rec["timings_s"]["zero_shot"] = time.perf_counter() - t2
        rec["versions"] = utils.versions()
    else:
        opts_by_method = _collect_options(args, args.allocation, table)
        options = dict(opts_by_method.get(args.allocation, {}))
        allocation = args.allocation
        if args.absorption_correction:
            options = {**opts_by_method.get("absorption", {}), "base": args.allocation, "base_options": options}
            allocation = "absorption"
        from prunekit.allocation import spec
        options = spec(allocation).check_options(options)  # before the model loads
        if allocation == "absorption":
            base = options.get("base", spec("absorption").options["base"].default)
            options["base_options"] = spec(base).check_options(options.get("base_options") or {})
        sess = Session(model_name=args.model, calib_dataset=args.calib_dataset,
                       calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen, seed=args.seed,
                       eval_datasets=evals, eval_seqlen=args.eval_seqlen, eval_windows=args.eval_windows,
                       batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                       zero_shot_batch_size=args.zero_shot_batch_size, progress=not args.quiet)
        rec = sess.run(allocation, args.metric, args.sparsity, args.nm, evaluate=bool(evals),
                       zero_shot=zs, zero_shot_limit=args.zero_shot_limit, s_min=args.s_min,
                       s_max=args.s_max, options_=options)
        t = rec["timings_s"]
        rec["timings_s"] = {"load": sess.timings["load_s"], "calibrate": sess.timings["data_s"],
                            "allocate": t.get("allocate", 0.0), "prune": t["calibrate_prune"],
                            **{k: v for k, v in t.items() if k in ("eval", "zero_shot")}}
        if args.save_model:
            from prunekit.core.models import save_model
            save_model(sess.model, sess.tokenizer, args.save_model)
            rec["saved_model"] = args.save_model
    rec["timings_s"]["total"] = time.perf_counter() - t0
    if args.out:
        utils.atomic_write_json(args.out, rec)
    _print_summary(rec)
    return rec


def demo(model: str = "smollm2-135m", profile: str = "quick") -> dict:
    """Dense vs 50 % magnitude / Wanda / SparseGPT on the default model: the README's first command."""
    from prunekit.experiments.session import Session
    sess = Session.from_profile(profile, model_name=model)
    p = sess.eval_seqlen, sess.eval_windows, sess.calib_samples, sess.calib_seqlen
    print(f"model {model}: eval wikitext2 {p[1]} windows x {p[0]} tokens; calibration c4 {p[2]} x {p[3]} tokens")
    rows = [("dense", 0.0, sess.dense()["wikitext2"])]
    for metric in ("magnitude", "wanda", "sparsegpt"):
        rec = sess.run("uniform", metric, 0.5)
        rows.append((f"{metric} 50%", rec["global_sparsity"], rec["perplexity"]["wikitext2"]))
    print(f"\n{'model':<16}{'sparsity':>10}{'wikitext2 ppl':>16}")
    for name, s, ppl in rows:
        print(f"{name:<16}{s:>10.3f}{ppl:>16.2f}")
    return {"rows": rows}


def main(argv=None) -> int:
    try:
        run(argv)
    except PrunekitError as e:
        print(f"prunekit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunekit: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
