"""`prunekit` console script: prune, eval, methods.

    prunekit prune --model smollm2-135m --metric wanda --sparsity 0.5 --allocation owl --owl-lambda 0.08 \\
                   --calib-dataset c4 --calib-samples 32 --calib-seqlen 512 --eval wikitext2 --out run.json
    prunekit eval  --model smollm2-135m --eval wikitext2 --eval-windows 8 --out dense.json
    prunekit methods
    prunekit sweep comparison-quick --out results.jsonl [--ray | --ray-address auto] [--retries 1]

Allocation options are flags generated from each registered method's keyword parameters:
``--<prefix>-<param>`` (``owl`` → ``--owl-m``, ``--owl-lambda``; ``alphapruning`` → ``--alpha-epsilon``).

Bad input never costs a run: every argument, every method option (from the registry's typed
contract), the output locations, the data files and the model (config and weight headers, read
without loading) are checked before any model loads. Every such error is one line on stderr and
exit code 2, with nothing written. An unexpected internal error is one line and exit code 1
(``--debug`` shows the traceback). The JSON record is written atomically once the run is complete;
a later failure (saving the model) keeps it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import warnings

from prunekit.core.offload import OFFLOAD_MODES
from prunekit.errors import PrunekitError

PREFIX = {"alphapruning": "alpha", "absorption": "absorption"}
RENAME = {"lam": "lambda"}  # python-safe parameter name -> flag word
DTYPES = ("auto", "fp32", "fp16", "bf16", "float32", "float16", "bfloat16")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block): the CLI's error contract."""

    def error(self, message):
        raise PrunekitError(message.splitlines()[0] if message else "bad arguments")


class _Help(argparse.RawDescriptionHelpFormatter):
    """Shows '(default: X)' for every option with a meaningful default."""

    def _get_help_string(self, action):
        h = action.help or ""
        if ("%(default)" in h or action.default is None or action.default is False
                or action.default in ("", argparse.SUPPRESS) or not action.option_strings):
            return h
        return f"{h} (default: %(default)s)" if h else "default: %(default)s"


def _flag(method: str, param: str) -> str:
    return f"--{PREFIX.get(method, method)}-{RENAME.get(param, param).replace('_', '-')}"


# ----------------------------------------------------------------------------- typed values

def _int_in(lo: int, hi: int | None = None):
    def conv(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(
                f"must be >= {lo}" + (f" and <= {hi}" if hi is not None else "") + f", got {v}")
        return v
    conv.__name__ = "int"
    return conv


def _float_in(lo: float, hi: float, hi_open: bool = True):
    def conv(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
        if not math.isfinite(v) or v < lo or v > hi or (hi_open and v == hi):
            raise argparse.ArgumentTypeError(f"must lie in [{lo}, {hi}{')' if hi_open else ']'}, got {text}")
        return v
    conv.__name__ = "float"
    return conv


def _parse_value(text: str, opt):
    """A method flag's text converted by the option's declared type; the registry checks the rest."""
    t = opt.type if opt.type is not None else type(opt.default) if opt.default is not None else None
    if opt.choices is not None:
        return text
    if t is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise PrunekitError(f"expected true/false, got '{text}'")
    if t is int:
        return int(text)
    if t is float:
        return float(text)
    if t in (dict, list):
        return json.loads(text)
    if t is None:
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
    """One help group per registered method: its flags with choices (metavar), default and range."""
    from prunekit.allocation import specs
    table = {}
    for name, sp in sorted(specs().items()):
        if not sp.options:
            continue
        g = p.add_argument_group(f"{name} options (--allocation {name})", sp.summary or None)
        for opt in sp.options.values():
            flag = _flag(name, opt.name)
            if flag in table:
                continue
            dest = f"opt__{name}__{opt.name}"
            g.add_argument(flag, dest=dest, default=None, metavar=_metavar(opt),
                           help=opt.describe().replace("%", "%%"))
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
            opts.setdefault(name, {})[prm.name] = _parse_value(val, prm)
        except ValueError:
            raise PrunekitError(f"{flag}: cannot parse '{val}'") from None
        except PrunekitError as e:
            raise PrunekitError(f"{flag}: {e}") from None
    return opts


# ----------------------------------------------------------------------------- parser

def _common(p: argparse.ArgumentParser) -> None:
    from prunekit.core.data import DATASETS
    g = p.add_argument_group("model and evaluation")
    g.add_argument("--model", default="smollm2-135m", help="alias, .gguf file, HF directory or hub id")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps (default: CUDA if available)")
    g.add_argument("--dtype", default=None, choices=DTYPES,
                   help="compute dtype (default: bf16 where the GPU/CPU computes it natively, fp16 on older "
                   "GPUs, else fp32; fp32 = reference numerics; statistics and the SparseGPT solve stay fp32)")
    g.add_argument("--eval", default="wikitext2",
                   help=f"comma-separated perplexity datasets from {','.join(DATASETS)} ('' to skip)")
    g.add_argument("--eval-seqlen", type=_int_in(2), default=1024, metavar="INT", help="tokens per window")
    g.add_argument("--eval-windows", type=_int_in(1), default=None, metavar="INT",
                   help="at most this many windows (default: the whole split)")
    g.add_argument("--zero-shot", default="", help="comma-separated lm-eval tasks, e.g. boolq,rte,arc_easy")
    g.add_argument("--zero-shot-limit", type=_int_in(1), default=None, metavar="INT",
                   help="first N documents per task (default: all)")
    g.add_argument("--zero-shot-batch-size", default="1", metavar="INT|auto",
                   help="lm-eval batch size: an integer or 'auto' (lm-eval's detection on CUDA; 8 on CPU)")
    o = p.add_argument_group("run")
    o.add_argument("--seed", type=_int_in(0, 2**32 - 1), default=0, metavar="INT", help="seed for every random step")
    o.add_argument("--out", default=None, help="write the JSON record here (atomically)")
    o.add_argument("--threads", type=_int_in(1, 4096), default=None, metavar="INT",
                   help="torch CPU threads (default: $PRUNEKIT_THREADS or torch's choice)")
    o.add_argument("--quiet", action="store_true", help="no progress bars (also transformers' and lm-eval's)")
    o.add_argument("--progress", action="store_true",
                   help="progress bars even when stderr is not a terminal (or PRUNEKIT_PROGRESS=1)")
    o.add_argument("--debug", action="store_true", help="show the traceback of an internal error")
    o.add_argument("--offload", default="auto", choices=OFFLOAD_MODES,
                   help="where block weights live: none (on the device), cpu, disk (memory-mapped), or auto: "
                   "none if model + calibration activations + 30%% headroom fit on the device, else cpu, else disk")


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    from prunekit import __version__
    from prunekit.allocation import specs
    from prunekit.core.data import DATASETS
    from prunekit.solvers.prune import METRICS
    ap = _Parser(prog="prunekit", description="Layer-wise sparsity allocation for LLM pruning.",
                 formatter_class=_Help)
    ap.add_argument("--version", action="version", version=f"prunekit {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    pr = sub.add_parser("prune", help="prune a model and evaluate it", formatter_class=_Help,
                        usage="%(prog)s --sparsity S [--metric M] [--allocation A] [options]",
                        description="Prune a model with a solver and a layer-wise allocation, then evaluate it.")
    g = pr.add_argument_group("pruning")
    g.add_argument("--metric", default="wanda", choices=METRICS, help="pruning solver")
    g.add_argument("--sparsity", type=_float_in(0.0, 1.0), default=None, metavar="FLOAT",
                   help="target global sparsity in [0, 1) (required unless --nm)")
    g.add_argument("--nm", default=None, metavar="N:M",
                   help="N:M semi-structured pattern, e.g. 2:4 (N pruned of every M; uniform allocation only)")
    g.add_argument("--allocation", default="uniform", choices=sorted(specs()),
                   help="layer-wise allocation method (see `prunekit methods`)")
    g.add_argument("--absorption-correction", action="store_true",
                   help="wrap the allocation with the absorption-aware correction")
    g.add_argument("--s-min", type=_float_in(0.0, 1.0), default=0.0, metavar="FLOAT",
                   help="lowest sparsity of any layer")
    g.add_argument("--s-max", type=_float_in(0.0, 1.0), default=0.99, metavar="FLOAT",
                   help="highest sparsity of any layer")
    c = pr.add_argument_group("calibration")
    c.add_argument("--calib-dataset", default="c4", choices=DATASETS, help="calibration text")
    c.add_argument("--calib-samples", type=_int_in(1, 1 << 20), default=128, metavar="INT", help="windows")
    c.add_argument("--calib-seqlen", type=_int_in(2), default=2048, metavar="INT", help="tokens per window")
    c.add_argument("--batch-size", type=_int_in(1), default=8, metavar="INT", help="calibration batch size")
    pr.add_argument("--save-model", default=None, metavar="DIR",
                    help="write the pruned model as a HF directory (new or empty)")
    pr.add_argument("--save-dtype", default=None, choices=["fp32", "bf16", "fp16"],
                    help="stored precision of --save-model (default: the model's dtype)")
    pr.add_argument("--export-recipe", default=None, metavar="PATH",
                    help="write the per-block plan as an llm-compressor recipe YAML (wanda / sparsegpt)")
    _common(pr)
    table = _add_method_flags(pr)
    ev = sub.add_parser("eval", help="evaluate a (dense or saved) model", formatter_class=_Help)
    _common(ev)
    sub.add_parser("methods", help="list the registered allocation methods")
    tk = sub.add_parser("tasks", help="list / write prunekit's offline lm-eval task twins", formatter_class=_Help)
    tk.add_argument("--write", default=None, metavar="DIR",
                    help="render the twins' YAMLs into DIR and print the stock `lm_eval` command")
    tk.add_argument("--tasks", default="", help="comma-separated stock task names (default: all with local data)")
    tk.add_argument("--model", default="PRUNED_MODEL_DIR", help="model directory shown in the printed command")
    dm = sub.add_parser("demo", help="quick dense vs pruned table on the default model", formatter_class=_Help)
    dm.add_argument("--model", default="smollm2-135m", help="model alias, .gguf, or HF directory")
    dm.add_argument("--profile", default="quick", choices=("quick", "cpu", "paper"), help="run profile")
    dm.add_argument("--debug", action="store_true", help="show the traceback of an internal error")
    dm.add_argument("--offload", default="auto", choices=OFFLOAD_MODES, help="where block weights live")
    _add_sweep(sub)
    return ap, table


def _add_sweep(sub) -> None:
    sw = sub.add_parser("sweep", help="run every cell of a grid file, appending one JSON line per cell",
                        description="Run a grid file (YAML; see prunekit/experiments/sweep.py) cell by cell. "
                        "Cells already in --out (same settings and code version) are skipped.")
    sw.add_argument("grid", help="grid YAML file, or a packaged grid name (comparison-quick, -cpu, -paper)")
    sw.add_argument("--out", required=True, help="JSON-lines results file (appended; resumable)")
    sw.add_argument("--ray", action="store_true", help="run (model, seed) groups as tasks on a local Ray")
    sw.add_argument("--ray-address", default=None, help="run on an existing Ray cluster (e.g. auto)")
    sw.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    sw.add_argument("--task-cpus", type=int, default=1, help="CPUs per Ray task when there is no GPU")
    sw.add_argument("--retries", type=int, default=0, help="re-run failed cells up to N more times")
    sw.add_argument("--quiet", action="store_true", help="no progress bar")
    sw.add_argument("--debug", action="store_true", help="show the traceback of an internal error")


def _sweep(args) -> dict:
    from prunekit.experiments.sweep import load_grid, run_grid
    grid = load_grid(args.grid)  # validated before anything loads
    if args.retries < 0 or args.task_cpus < 1 or (args.num_cpus is not None and args.num_cpus < 1):
        raise PrunekitError("--retries must be >= 0, --task-cpus and --num-cpus >= 1")
    df = run_grid(grid, args.out, ray=args.ray, address=args.ray_address, num_cpus=args.num_cpus,
                  task_cpus=args.task_cpus, retries=args.retries, progress=not args.quiet)
    a = df.attrs
    print(f"{len(df)} cells: {a['ran']} run now, {a['skipped']} already in {args.out}, "
          f"{len(a['failed'])} failed; {a['model_loads']} model loads")
    if a["failed"]:
        raise PrunekitError(f"{len(a['failed'])} cell(s) failed (see 'error' in {args.out}; --retries N re-runs them)")
    return {"cells": len(df), "ran": a["ran"], "failed": a["failed"]}




# ----------------------------------------------------------------------------- validation (before work)

def check_device(device: str | None) -> None:
    """cpu, cuda, cuda:N (that GPU present), mps (available) or auto; anything else is an error."""
    import re

    import torch
    if device in (None, "auto", "cpu"):
        return
    m = re.fullmatch(r"cuda(?::(\d+))?", device)
    if m:
        if not torch.cuda.is_available():
            raise PrunekitError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
            raise PrunekitError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present")
        return
    if device == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise PrunekitError("--device mps: MPS is not available on this machine")
        return
    raise PrunekitError(f"unknown --device '{device}'; use cpu, cuda, cuda:N, mps or auto")


def _datasets(text: str, flag: str) -> list[str]:
    from prunekit.core.data import DATASETS
    names = [d.strip() for d in text.split(",") if d.strip()]
    for d in names:
        if d not in DATASETS:
            raise PrunekitError(f"unknown {flag} dataset '{d}'; choose from {', '.join(DATASETS)}")
    return list(dict.fromkeys(names))


def _check_text(name: str, split: str, seqlen: int | None = None, flag: str = "") -> None:
    """The data file exists, is UTF-8 text and is not empty (read now, not after pruning), and is
    long enough for one window of ``seqlen`` tokens (a byte-level BPE or SentencePiece token spans
    at least one UTF-8 byte, so a text of fewer bytes can never fill the window — no tokenizer needed)."""
    from prunekit.core.data import load_text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = load_text(name, split)
    if not (t.text or "").strip() and not any((d or "").strip() for d in (t.docs or [])):
        raise PrunekitError(f"dataset '{name}' ({split}) from {t.origin} holds no text")
    if seqlen is not None:
        longest = (len(t.text.encode()) if t.text is not None else max(len(d.encode()) for d in t.docs))
        if longest + 2 <= seqlen:  # +2: BOS/EOS the tokenizer may add
            what = "text" if t.text is not None else "longest document"
            raise PrunekitError(f"{flag} {seqlen}: the {what} of dataset '{name}' ({split}) has only {longest} "
                                f"bytes, fewer than {seqlen} tokens")


def _check_environment() -> None:
    """Variables that would otherwise fail deep inside a run."""
    from prunekit.core.models import cache_dir
    th = os.environ.get("PRUNEKIT_THREADS", "")
    if th and not (th.isdigit() and int(th) >= 1):
        raise PrunekitError(f"PRUNEKIT_THREADS={th!r} must be a positive integer")
    c = cache_dir()
    probe = c
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise PrunekitError(f"PRUNEKIT_CACHE={c} is not a writable directory ({probe} is in the way)")


def validate(args, table: dict | None = None) -> dict:
    """Every check that can fail, before the model loads. Returns the prepared run settings:
    ``evals``, ``zero_shot``, ``allocation`` and its checked ``options``, ``model_info``."""
    from prunekit.core.preflight import peek_model
    from prunekit.utils import check_writable
    prep: dict = {}
    if args.offload == "disk":  # the offload work directory must be writable: check before loading
        import shutil

        from prunekit.core.models import cache_dir
        from prunekit.core.offload import make_work_dir
        shutil.rmtree(make_work_dir(cache_dir() / "offload"), ignore_errors=True)
    prep["evals"] = _datasets(args.eval, "--eval")
    zs = [t.strip() for t in args.zero_shot.split(",") if t.strip()]
    if zs:
        from prunekit.evaluation.tasks import OFFLINE_TASKS, STOCK_TASKS
        bad = [t for t in zs if t not in OFFLINE_TASKS]
        if bad:
            raise PrunekitError(f"unknown zero-shot task {', '.join(map(repr, bad))}; choose from {', '.join(STOCK_TASKS)}")
        from prunekit.evaluation.tasks import data_dir, has_local_data
        offline = any(os.environ.get(v, "") not in ("", "0") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
        for t in zs:
            if offline and not has_local_data(t):
                raise PrunekitError(f"zero-shot task '{t}': its files ({', '.join(OFFLINE_TASKS[t].files)}) are not "
                                    f"under PRUNEKIT_DATA_DIR={data_dir()} and the hub is offline")
    prep["zero_shot"] = list(dict.fromkeys(zs)) or None
    check_device(args.device)
    _check_environment()
    for flag, val in (("--out", args.out), ("--save-model", getattr(args, "save_model", None))):
        if val is not None and not val.strip():
            raise PrunekitError(f"{flag} needs a path, got an empty string")
    if args.out:
        check_writable(args.out, "--out")
    from prunekit.evaluation.zeroshot import resolve_batch_size
    resolve_batch_size(args.zero_shot_batch_size, "cpu")
    if args.cmd == "prune":
        from prunekit.allocation import spec
        from prunekit.solvers.masks import parse_nm
        nm = parse_nm(args.nm)
        if nm is not None:
            if args.sparsity is not None and abs(args.sparsity - nm[0] / nm[1]) > 1e-9:
                raise PrunekitError(f"--sparsity {args.sparsity} contradicts --nm {args.nm} (= {nm[0] / nm[1]})")
            if args.allocation != "uniform" or args.absorption_correction:
                raise PrunekitError(f"--nm {args.nm} prunes every layer alike; it needs --allocation uniform "
                                    "without --absorption-correction")
            args.sparsity = nm[0] / nm[1]
        if args.sparsity is None:
            raise PrunekitError("--sparsity is required (or give --nm)")
        if args.s_min > args.s_max:
            raise PrunekitError(f"--s-min {args.s_min} is above --s-max {args.s_max}")
        if not (args.s_min <= args.sparsity <= args.s_max):
            raise PrunekitError(f"--sparsity {args.sparsity} lies outside [--s-min {args.s_min}, --s-max {args.s_max}]")
        if args.save_dtype and not args.save_model:
            raise PrunekitError("--save-dtype needs --save-model DIR")
        if args.export_recipe:
            from prunekit.reporting.artifacts import RECIPE_MODIFIERS
            if args.metric not in RECIPE_MODIFIERS:
                raise PrunekitError(f"--export-recipe needs --metric {' or '.join(RECIPE_MODIFIERS)} "
                                    f"(llm-compressor has no per-layer {args.metric} modifier)")
            check_writable(args.export_recipe, "--export-recipe")
        if args.save_model:
            check_writable(args.save_model, "--save-model", directory=True)
            if args.out and os.path.abspath(args.out) == os.path.abspath(args.save_model):
                raise PrunekitError("--out and --save-model name the same path")
        opts_by_method = _collect_options(args, args.allocation, table or {})
        options = dict(opts_by_method.get(args.allocation, {}))
        allocation = args.allocation
        if args.absorption_correction:
            options = {**opts_by_method.get("absorption", {}), "base": args.allocation, "base_options": options}
            allocation = "absorption"
        info = peek_model(args.model)
        nb = info.num_blocks
        options = spec(allocation).check_options(options, nb)  # the method's declared contract
        if allocation == "absorption":
            base = options.get("base", spec("absorption").options["base"].default)
            options["base_options"] = spec(base).check_options(options.get("base_options") or {}, nb)
        if nm is not None and info.widths and any(w % nm[1] for w in info.widths):
            raise PrunekitError(f"--nm {args.nm}: M={nm[1]} does not divide the layer widths {info.widths} "
                                f"of model '{args.model}'")
        held = {**options, **(options.get("base_options") or {})}.get("heldout") if allocation in (
            "svnup", "absorption") else None
        if isinstance(held, str):
            _datasets(held, "--svnup-heldout")
            _check_text(held, "calib")
        prep.update(allocation=allocation, options=options)
        seqlens = {"--calib-seqlen": args.calib_seqlen, "--eval-seqlen": args.eval_seqlen}
        _check_text(args.calib_dataset, "calib", args.calib_seqlen + 1, "--calib-seqlen")
    else:
        info = peek_model(args.model)
        seqlens = {"--eval-seqlen": args.eval_seqlen}
    prep["model_info"] = info
    if info.max_positions:
        for flag, n in seqlens.items():
            if flag == "--eval-seqlen" and not prep["evals"]:
                continue
            if n > info.max_positions:
                raise PrunekitError(f"{flag} {n} exceeds the {info.max_positions} positions of model '{args.model}'")
    for d in prep["evals"]:
        _check_text(d, "test", args.eval_seqlen, "--eval-seqlen")
    return prep


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


def run(argv=None) -> dict:
    ap, table = build_parser()
    args = ap.parse_args(argv)
    args.argv = argv
    if args.cmd == "methods":
        from prunekit.allocation import methods
        for name, doc in sorted(methods().items()):
            print(f"{name:<14} {doc}")
        return {}
    if args.cmd == "demo":  # the same bar policy as prune/eval: none when stderr is not a terminal
        progress = progress_wanted(False)
        with (contextlib.nullcontext() if progress else bars_off()):
            return demo(args.model, args.profile, args.offload, progress)
    if args.cmd == "tasks":
        return tasks_command(args.write, args.tasks, args.model)
    if args.cmd == "sweep":
        return _sweep(args)
    prep = validate(args, table)  # everything that can be wrong with the input, before any work
    progress = progress_wanted(args.quiet, args.progress)
    with (contextlib.nullcontext() if progress else bars_off()):
        return _execute(args, prep, progress)


def _execute(args, prep: dict, progress: bool) -> dict:
    threads = args.threads or int(os.environ.get("PRUNEKIT_THREADS") or 0) or None  # validated
    if threads:
        import torch
        torch.set_num_threads(threads)
    from prunekit import utils
    from prunekit.experiments.session import Session
    evals, zs = tuple(prep["evals"]), prep["zero_shot"]
    t0 = time.perf_counter()
    if args.cmd == "eval":
        from prunekit.core.models import load_model
        try:
            model, tok = load_model(args.model, args.device, args.dtype, offload=args.offload)
        except PrunekitError:
            raise
        except (OSError, ValueError, RuntimeError, KeyError, ImportError) as e:
            raise _load_error(args, e) from e
        load_s = time.perf_counter() - t0
        from prunekit.evaluation.perplexity import perplexity
        from prunekit.solvers.prune import measure_sparsity
        utils.seed_everything(args.seed)
        from prunekit.core.models import dtype_name
        rec = {"model": args.model, "dtype": dtype_name(model.dtype), **measure_sparsity(model), "seed": args.seed}
        t1 = time.perf_counter()
        res = {d: perplexity(model, tok, d, args.eval_seqlen, args.eval_windows, progress=progress)
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
    rec["provenance"] = provenance(argv=["prunekit", *(sys.argv[1:] if args.argv is None else args.argv)])
    if args.cmd == "prune" and args.export_recipe:
        from prunekit.reporting.artifacts import block_names, recipe_yaml
        utils.atomic_write_text(args.export_recipe, recipe_yaml(rec, block_names(sess.model)))
        rec["recipe"] = args.export_recipe
    if args.out:
        utils.atomic_write_json(args.out, rec)  # the run is complete: the record is kept whatever follows
    if args.cmd == "prune" and args.save_model:
        from prunekit.core.models import save_model
        from prunekit.reporting.artifacts import model_card
        try:
            saved = {**rec, "saved_model": args.save_model,
                     "saved_dtype": args.save_dtype or str(next(sess.model.parameters()).dtype).removeprefix("torch.")}
            record = json.dumps(utils._finite(saved), indent=2, default=utils._jsonable, allow_nan=False) + "\n"
            save_model(sess.model, sess.tokenizer, args.save_model, dtype=args.save_dtype,
                       meta={"base_model": args.model}, extra_files={"README.md": model_card(saved),
                                                                     "prunekit_record.json": record})
            rec = saved
        except Exception as e:
            kept = f"; the results JSON {args.out} is complete" if args.out else ""
            raise SaveError(f"saving the model to {args.save_model} failed: {type(e).__name__}: "
                            f"{(str(e).strip().splitlines() or [''])[0]}{kept}") from e
        rec["saved_model"] = args.save_model
        if args.out:
            utils.atomic_write_json(args.out, rec)
    _print_summary(rec)
    return rec


def tasks_command(write: str | None, tasks: str = "", model: str = "PRUNED_MODEL_DIR") -> dict:
    """``prunekit tasks [--write DIR]``: the offline twins of stock lm-eval tasks (reading
    $PRUNEKIT_DATA_DIR), rendered for the stock ``lm_eval`` CLI."""
    import shlex

    from prunekit.evaluation.tasks import OFFLINE_TASKS, STOCK_TASKS, data_dir, has_local_data, write_task_configs
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
    from pathlib import Path
    names = write_task_configs(Path(write), wanted)
    cmd = ["lm_eval", "--model", "hf", "--model_args", f"pretrained={model},dtype=float32",
           "--include_path", str(Path(write).resolve()), "--tasks", ",".join(names.values()), "--batch_size", "1"]
    print(f"wrote {len(names)} task(s) to {write}: {', '.join(names.values())}")
    print("run them with the stock lm-eval CLI (add --limit N for a quick check, --device cuda on a GPU):")
    print("  " + shlex.join(cmd))
    return {"tasks": names, "command": cmd}


class SaveError(PrunekitError):
    """Writing an output failed after the run completed (exit 1: the input was fine)."""


def demo(model: str = "smollm2-135m", profile: str = "quick", offload: str = "auto", progress: bool = True) -> dict:
    """Dense vs 50 % magnitude / Wanda / SparseGPT on the default model: the README's first command."""
    from prunekit.experiments.session import Session
    sess = Session.from_profile(profile, model_name=model, offload=offload, progress=progress)
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


def _one_line_warnings() -> None:
    def fmt(message, category, filename, lineno, line=None):
        return f"prunekit: warning: {str(message).strip().splitlines()[0] if str(message).strip() else category.__name__}\n"
    warnings.formatwarning = fmt


def main(argv=None) -> int:
    """Exit codes: 0 done, 2 bad input (one line, nothing written), 1 internal error or a failed
    write after the run (one line; --debug or PRUNEKIT_DEBUG=1 shows the traceback), 130 Ctrl-C."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("PRUNEKIT_DEBUG", "") not in ("", "0")
    old_fmt = warnings.formatwarning
    if not debug:
        _one_line_warnings()
    try:
        run(argv)
    except SaveError as e:
        print(f"prunekit: error: {e}", file=sys.stderr)
        if debug:
            raise
        return 1
    except PrunekitError as e:
        print(f"prunekit: error: {e}", file=sys.stderr)
        if debug:
            raise
        return 2
    except KeyboardInterrupt:
        print("prunekit: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else 0
    except Exception as e:
        if debug:
            raise
        msg = (str(e).strip().splitlines() or [""])[0]
        print(f"prunekit: internal error: {type(e).__name__}: {msg} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = old_fmt
    return 0


if __name__ == "__main__":
    sys.exit(main())
