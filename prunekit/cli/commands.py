"""The commands: prune / eval (``execute``), tasks, demo and sweep, with their progress-bar policy."""
from __future__ import annotations

import contextlib
import os
import sys
import time

from prunekit.errors import PrunekitError, SaveError

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


def progress_wanted(quiet: bool, force: bool = False, stream=None) -> bool:
    """Bars only for a person watching: off with --quiet or TQDM_DISABLE=1, off when stderr is not a
    terminal (log files, CI) unless forced with --progress or PRUNEKIT_PROGRESS=1."""
    from prunekit.utils import env_bars_off
    if quiet or env_bars_off():
        return False
    if force or os.environ.get("PRUNEKIT_PROGRESS", "").lower() in ("1", "true", "yes"):
        return True
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


@contextlib.contextmanager
def bars_off():
    """Every library's bars off for the duration: tqdm's default ``disable`` (lm-eval, datasets and
    transformers' GGUF/"Loading weights" bars create plain tqdm bars; TQDM_DISABLE is only read
    when tqdm is imported), transformers' and huggingface_hub's own switches."""
    import functools

    import tqdm.std
    saved_init, saved_env = tqdm.std.tqdm.__init__, os.environ.get("TQDM_DISABLE")
    tqdm.std.tqdm.__init__ = functools.partialmethod(saved_init, disable=True)
    os.environ["TQDM_DISABLE"] = "1"
    hf = hub = None
    try:
        from transformers.utils import logging as hf
        was_hf = hf.is_progress_bar_enabled()
        hf.disable_progress_bar()
    except ImportError:
        hf = None
    try:
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
        was_hub = not are_progress_bars_disabled()
        disable_progress_bars()
        hub = enable_progress_bars
    except ImportError:
        hub = None
    try:
        yield
    finally:
        tqdm.std.tqdm.__init__ = saved_init
        if saved_env is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = saved_env
        if hf is not None and was_hf:
            hf.enable_progress_bar()
        if hub is not None and was_hub:
            hub()


def _load_error(args, e: Exception) -> PrunekitError:
    return PrunekitError(f"cannot load model '{args.model}': {type(e).__name__}: "
                         f"{(str(e).strip().splitlines() or [''])[0]}")


def execute(args, prep: dict, progress: bool) -> dict:
    """prune / eval after ``checks.validate``: load, (prune,) evaluate, write the record, save."""
    threads = args.threads or int(os.environ.get("PRUNEKIT_THREADS") or 0) or None  # validated
    if threads:
        import torch
        torch.set_num_threads(threads)
    from prunekit import utils
    from prunekit.experiments.session import Session
    evals, zs = tuple(prep["evals"]), prep["zero_shot"]
    t0 = time.perf_counter()
    if args.cmd == "eval":
        from prunekit.core.loading import load_model
        try:
            rt = load_model(args.model, args.device, args.dtype, offload=args.offload)
        except PrunekitError:
            raise
        except (OSError, ValueError, RuntimeError, KeyError, ImportError) as e:
            raise _load_error(args, e) from e
        load_s = time.perf_counter() - t0
        from prunekit.evaluation.perplexity import perplexity, record_fields
        from prunekit.solvers.prune import measure_sparsity
        utils.seed_everything(args.seed)
        rec = {"model": args.model, "dtype": rt.precision, **measure_sparsity(rt), "seed": args.seed}
        t1 = time.perf_counter()
        res = {d: perplexity(rt, d, args.eval_seqlen, args.eval_windows, progress=progress)
               for d in evals}
        rec.update(record_fields(res, args.eval_seqlen, args.eval_windows))
        rec["tokens_per_s"] = {d: r["tokens_per_s"] for d, r in res.items()}
        rec["timings_s"] = {"load": load_s, "eval": time.perf_counter() - t1}
        if zs:
            from prunekit.evaluation.perplexity import zero_shot
            t2 = time.perf_counter()
            rec["zero_shot"] = zero_shot(rt, zs, limit=args.zero_shot_limit,
                                         batch_size=args.zero_shot_batch_size)
            rec["timings_s"]["zero_shot"] = time.perf_counter() - t2
        rec["versions"] = utils.versions()
    else:
        allocation, options = prep["allocation"], prep["options"]
        try:
            sess = Session(model_name=args.model, calib_dataset=args.calib_dataset,
                           calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen, seed=args.seed,
                           eval_datasets=evals, eval_seqlen=args.eval_seqlen, eval_windows=args.eval_windows,
                           batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                           offload=args.offload, restorable=False, progress=progress,
                           zero_shot_batch_size=args.zero_shot_batch_size)
        except PrunekitError:
            raise
        except (OSError, ValueError, RuntimeError, KeyError, ImportError) as e:
            raise _load_error(args, e) from e
        rec = sess.run(allocation, args.metric, args.sparsity, args.nm, evaluate=bool(evals),
                       zero_shot=zs, zero_shot_limit=args.zero_shot_limit, s_min=args.s_min,
                       s_max=args.s_max, options_=options)
        t = rec["timings_s"]
        rec["timings_s"] = {"load": sess.timings["load_s"], "calibrate": sess.timings["data_s"],
                            "allocate": t.get("allocate", 0.0), "prune": t["calibrate_prune"],
                            **{k: v for k, v in t.items() if k in ("eval", "zero_shot")}}
    rec["timings_s"]["total"] = time.perf_counter() - t0
    from prunekit.reporting.provenance import provenance
    if args.cmd == "prune":  # the dense model's fingerprint, taken by the session's Statistics
        rt = sess.runtime
    argv = ["prunekit", *(sys.argv[1:] if args.argv is None else args.argv)]
    rec["provenance"] = provenance([rt if args.cmd == "eval" else sess], argv=argv)
    if args.cmd == "prune" and args.export_recipe:
        from prunekit.reporting.artifacts import block_names, recipe_yaml
        utils.atomic_write_text(args.export_recipe, recipe_yaml(rec, block_names(rt.model)))
        rec["recipe"] = args.export_recipe
    if args.out:
        utils.atomic_write_json(args.out, rec)  # the run is complete: the record is kept whatever follows
    if args.cmd == "prune" and args.save_model:
        from prunekit.oneshot import save
        try:
            save(rt, args.save_model, rec, args.save_dtype)
        except Exception as e:
            kept = f"; the results JSON {args.out} is complete" if args.out else ""
            raise SaveError(f"saving the model to {args.save_model} failed: {type(e).__name__}: "
                            f"{(str(e).strip().splitlines() or [''])[0]}{kept}") from e
        rec = {**rec, "saved_model": args.save_model,
               "saved_dtype": args.save_dtype or str(rt.dtype).removeprefix("torch.")}
        if args.out:
            utils.atomic_write_json(args.out, rec)
    _print_summary(rec)
    return rec


def tasks_command(write: str | None, tasks: str = "", model: str = "PRUNED_MODEL_DIR") -> dict:
    """``prunekit tasks [--write DIR]``: the offline twins of stock lm-eval tasks (reading
    $PRUNEKIT_DATA_DIR), rendered for the stock ``lm_eval`` CLI."""
    import shlex

    from prunekit.evaluation.tasks import OFFLINE_TASKS, STOCK_TASKS, data_dir, has_local_data, write_task_configs
    if write is not None and not write.strip():
        raise PrunekitError("--write needs a directory, got an empty string")
    wanted = [t for t in tasks.split(",") if t] or [t for t in STOCK_TASKS if has_local_data(t)]
    for t in wanted:
        if t not in OFFLINE_TASKS:
            raise PrunekitError(f"unknown task '{t}'; choose from {', '.join(STOCK_TASKS)}")
    if not write:
        root = data_dir()
        for t in STOCK_TASKS:
            print(f"{OFFLINE_TASKS[t].name:<26} {'local data' if has_local_data(t) else 'missing under ' + str(root)}")
        return {"tasks": {t: OFFLINE_TASKS[t].name for t in STOCK_TASKS}}
    if not wanted:
        raise PrunekitError("no task has its files under PRUNEKIT_DATA_DIR; point it at a copy of shared/data")
    if any(c in model for c in ",=\n\r") or not model.strip():
        raise PrunekitError(f"--model {model!r}: a model directory for lm-eval's --model_args cannot contain "
                            "',', '=' or a newline")
    from pathlib import Path
    names = write_task_configs(Path(write), wanted)
    cmd = ["lm_eval", "--model", "hf", "--model_args", f"pretrained={model},dtype=float32",
           "--include_path", str(Path(write).resolve()), "--tasks", ",".join(names.values()), "--batch_size", "1"]
    print(f"wrote {len(names)} task(s) to {write}: {', '.join(names.values())}")
    print("run them with the stock lm-eval CLI (add --limit N for a quick check, --device cuda on a GPU):")
    print("  " + shlex.join(cmd))
    return {"tasks": names, "command": cmd}


def demo(model: str = "smollm2-135m", profile: str = "quick", offload: str = "auto", progress: bool = True) -> dict:
    """Dense vs 50 % magnitude / Wanda / SparseGPT on the default model: the README's first command."""
    from prunekit.experiments.session import Session
    try:
        sess = Session.from_profile(profile, model_name=model, offload=offload, progress=progress)
    except PrunekitError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, ImportError) as e:  # as prune: one line naming the model
        raise PrunekitError(f"cannot load model '{model}': {type(e).__name__}: "
                            f"{(str(e).strip().splitlines() or [''])[0]}") from e
    p = sess.eval_seqlen, sess.eval_windows, sess.calib_samples, sess.calib_seqlen
    print(f"model {model}: eval wikitext2 {p[1]} windows x {p[0]} tokens; calibration c4 {p[2]} x {p[3]} tokens")
    rows = [("dense", 0.0, sess.dense()["wikitext2"])]
    from prunekit.vocabulary import METRICS
    for metric in METRICS:
        rec = sess.run("uniform", metric, 0.5)
        rows.append((f"{metric} 50%", rec["global_sparsity"], rec["perplexity"]["wikitext2"]))
    print(f"\n{'model':<16}{'sparsity':>10}{'wikitext2 ppl':>16}")
    for name, s, ppl in rows:
        print(f"{name:<16}{s:>10.3f}{ppl:>16.2f}")
    return {"rows": rows}


def sweep(args) -> dict:
    from prunekit.experiments.sweep import load_grid, run_grid
    from prunekit.experiments.sweep.runners import check_address
    if args.retries < 0 or args.task_cpus < 1 or (args.num_cpus is not None and args.num_cpus < 1):
        raise PrunekitError("--retries must be >= 0, --task-cpus and --num-cpus >= 1")
    if not args.out.strip():
        raise PrunekitError("--out needs a path, got an empty string")
    grid = load_grid(args.grid)  # validated before anything loads
    if args.ray_address:
        check_address(args.ray_address)
    progress = progress_wanted(args.quiet)
    with (contextlib.nullcontext() if progress else bars_off()):
        df = run_grid(grid, args.out, ray=args.ray, address=args.ray_address, num_cpus=args.num_cpus,
                      task_cpus=args.task_cpus, retries=args.retries, progress=progress)
    a = df.attrs
    print(f"{len(df)} cells: {a['ran']} run now, {a['skipped']} already in {args.out}, "
          f"{len(a['failed'])} failed; {a['model_loads']} model loads")
    if a["failed"]:
        raise PrunekitError(f"{len(a['failed'])} cell(s) failed (see 'error' in {args.out}; --retries N re-runs them)")
    return {"cells": len(df), "ran": a["ran"], "failed": a["failed"]}
