"""`prunekit` console script: prune, eval, methods, tasks, demo, sweep.

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

The package: ``parser`` (arguments and method flags), ``checks`` (validation before work),
``commands`` (what each subcommand does). Nothing heavy is imported until a command runs, so
``--version`` and ``--help`` answer at once.
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings

from prunekit.errors import PrunekitError, SaveError


def _command(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (its first word that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


_FLAGS = ("", "0", "1", "true", "false", "yes", "no", "on", "off")


def check_env() -> None:
    """prunekit's environment variables, validated like flags for every command (``--version``
    included): one line, exit 2."""
    th = os.environ.get("PRUNEKIT_THREADS")
    if th is not None and th.strip() and not (th.strip().isdigit() and int(th) >= 1):
        raise PrunekitError(f"PRUNEKIT_THREADS={th!r} must be a positive integer")
    for var in ("PRUNEKIT_PROGRESS", "PRUNEKIT_DEBUG"):
        v = os.environ.get(var)
        if v is not None and v.strip().lower() not in _FLAGS:
            raise PrunekitError(f"{var}={v!r} must be one of 1, 0, true, false, yes, no")
    for var in ("PRUNEKIT_CACHE", "PRUNEKIT_DATA_DIR"):
        v = os.environ.get(var)
        if v is not None and not v.strip():
            raise PrunekitError(f"{var} is set but empty; unset it or give a directory")


def run(argv=None) -> dict:
    from prunekit.cli.parser import build_parser
    argv = sys.argv[1:] if argv is None else list(argv)
    check_env()
    ap, table = build_parser(method_flags=_command(argv) == "prune")
    args = ap.parse_args(argv)
    args.argv = argv
    from prunekit.cli import commands
    if args.cmd == "methods":
        from prunekit.allocation import methods
        for name, doc in sorted(methods().items()):
            print(f"{name:<14} {doc}")
        return {}
    if args.cmd == "demo":  # the same checks before loading and bar policy as prune/eval
        from prunekit.cli.checks import validate_demo
        validate_demo(args)
        progress = commands.progress_wanted(False)
        with (contextlib.nullcontext() if progress else commands.bars_off()):
            return commands.demo(args.model, args.profile, args.offload, progress)
    if args.cmd == "tasks":
        return commands.tasks_command(args.write, args.tasks, args.model)
    if args.cmd == "sweep":
        return commands.sweep(args)
    from prunekit.cli.checks import validate
    prep = validate(args, table)  # everything that can be wrong with the input, before any work
    progress = commands.progress_wanted(args.quiet, args.progress)
    with (contextlib.nullcontext() if progress else commands.bars_off()):
        return commands.execute(args, prep, progress)


def _one_line_warnings() -> None:
    def fmt(message, category, filename, lineno, line=None):
        return f"prunekit: warning: {str(message).strip().splitlines()[0] if str(message).strip() else category.__name__}\n"
    warnings.formatwarning = fmt


def main(argv=None) -> int:
    """Exit codes: 0 done, 2 bad input (one line, nothing written), 1 internal error or a failed
    write after the run (one line; --debug or PRUNEKIT_DEBUG=1 shows the traceback), 130 Ctrl-C."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("PRUNEKIT_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")
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
