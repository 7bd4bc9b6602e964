"""The argument parser: typed values, the common model/evaluation/run options, and one flag per
registered allocation option (``--<prefix>-<param>``, from the registry's typed contract)."""
from __future__ import annotations

import argparse
import json
import math

from prunekit.errors import PrunekitError
from prunekit.vocabulary import DATASETS, DTYPE_NAMES, METRICS, OFFLOAD_MODES

PREFIX = {"alphapruning": "alpha", "absorption": "absorption"}
RENAME = {"lam": "lambda"}  # python-safe parameter name -> flag word


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


PRUNE_EXAMPLES = """Prune a model with a solver and a layer-wise allocation, then evaluate it.

examples:
  # Wanda at 50 %, every layer alike, on the embedded SmolLM2; perplexity on WikiText-2
  prunekit prune --sparsity 0.5 --metric wanda --out run.json
  # OWL + SparseGPT at 70 % with the absorption correction, saved as a HF directory
  prunekit prune --sparsity 0.7 --metric sparsegpt --allocation owl --absorption-correction --save-model pruned/
  # 2:4 semi-structured Wanda on a 7B model with its blocks offloaded to disk (a T4 in Colab)
  prunekit prune --nm 2:4 --metric wanda --model meta-llama/Llama-2-7b-hf --dtype fp16 --offload disk
"""


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


def collect_options(args, method: str, table: dict) -> dict:
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
    g = p.add_argument_group("model and evaluation")
    g.add_argument("--model", default="smollm2-135m", help="alias, .gguf file, HF directory or hub id")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps (default: CUDA if available)")
    g.add_argument("--dtype", default=None, choices=DTYPE_NAMES,
                   help="precision (default: bf16 on GPUs that compute it natively, fp16 on older GPUs; on a "
                   "CPU 'mixed' where it computes bf16 natively: fp32 weights, calibration and pruning, bf16 "
                   "evaluation; else fp32). bf16 = fastest pruning; statistics and the SparseGPT solve stay fp32")
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


def build_parser(method_flags: bool = True) -> tuple[argparse.ArgumentParser, dict]:
    """The parser and the method-flag table. ``method_flags=False`` leaves out what needs the
    allocation registry (and so torch): the top-level ``--help`` and the other subcommands."""
    from prunekit import __version__
    ap = _Parser(prog="prunekit", description="Layer-wise sparsity allocation for LLM pruning.",
                 formatter_class=_Help)
    ap.add_argument("--version", action="version", version=f"prunekit {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    pr = sub.add_parser("prune", help="prune a model and evaluate it", formatter_class=_Help,
                        usage="%(prog)s --sparsity S [--metric M] [--allocation A] [options]",
                        description=PRUNE_EXAMPLES)
    g = pr.add_argument_group("pruning")
    g.add_argument("--metric", default="wanda", choices=METRICS, help="pruning solver")
    g.add_argument("--sparsity", type=_float_in(0.0, 1.0), default=None, metavar="FLOAT",
                   help="target global sparsity in [0, 1) (required unless --nm)")
    g.add_argument("--nm", default=None, metavar="N:M",
                   help="N:M semi-structured pattern, e.g. 2:4 (N pruned of every M; uniform allocation only)")
    g.add_argument("--allocation", default="uniform", choices=_allocations(method_flags),
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
    table = _add_method_flags(pr) if method_flags else {}
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


def _allocations(registry: bool) -> list[str] | None:
    if not registry:
        return None
    from prunekit.allocation import specs
    return sorted(specs())
