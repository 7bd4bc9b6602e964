"""The bad-input matrix of tests/test_cli_bad_input.py, classified the way the issue-13 audit counted:

* clean: exit 2, one line on stderr, no file written, the model loader never reached;
* noisy: exit 2 before the loader, but more than one line (argparse's usage block) or a file written;
* traceback: exit 1 or a Python traceback (an exception escaping ``main``);
* reached: the model loader was reached with nothing objecting first (in a real run: late, a
  traceback after loading/pruning, or silently accepted — the audit's late/accepted split needs
  real runs, which this tripwire never does).

    python -m benchmarks.bad_input            # this checkout
    PYTHONPATH=/tmp/old python -m benchmarks.bad_input   # another prunekit (e.g. `git archive` of main)

The loaders are replaced by a tripwire, so no case ever loads a model.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


class _Reached(BaseException):
    pass


def _trip(*a, **k):
    raise _Reached()


def main() -> None:
    os.environ.setdefault("PRUNEKIT_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    import importlib

    import test_cli_bad_input as T
    from conftest import tiny_model

    import prunekit
    from prunekit.cli import main as cli
    # Every loader entry point, in this checkout's layout (prunekit.core.loading/aliases) or the one
    # before it (prunekit.core.models), so an older checkout on PYTHONPATH is classified the same way.
    targets = [("prunekit.core.loading", "load_model"), ("prunekit.experiments.session", "load_model"),
               ("prunekit.core.aliases", "dense_cache_for_gguf"), ("prunekit.core.aliases", "_tiny_llama"),
               ("prunekit.core.models", "load_model"), ("prunekit.core.models", "_dense_cache_for_gguf"),
               ("prunekit.core.models", "_tiny_llama")]
    patched = 0
    for modname, name in targets:
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue
        if hasattr(mod, name):
            setattr(mod, name, _trip)
            patched += 1
        if hasattr(mod, "ALIASES"):
            mod.ALIASES["tiny-llama"] = _trip
    if not patched:
        raise SystemExit("bad_input: found no model loader to replace in this prunekit")
    print(f"prunekit from {Path(prunekit.__file__).parent}")
    tmp = Path(tempfile.mkdtemp(prefix="bad-input-"))
    md = tmp / "tiny"
    tiny_model("llama").save_pretrained(md, safe_serialization=True)
    cases = []
    for cid, extra, needle in T.CASES:
        cases.append((cid, lambda ws, extra=extra: [a.replace("{model}", str(md)) for a in T.PRUNE]
                      + ["--out", str(ws / "run.json"), "--save-model", str(ws / "saved")] + extra, {}))
    for cid, setup, needle in T.PATH_CASES:
        def build(ws, setup=setup):
            sub = setup(ws, md)
            build.env = sub.get("env", {})
            return ([a.replace("{model}", sub.get("model", str(md))) for a in T.PRUNE] + sub.get("argv", [])
                    + ["--out", sub.get("out", str(ws / "run.json")),
                       "--save-model", sub.get("save", str(ws / "saved"))])
        cases.append((cid, build, None))
    for cid, extra, needle in T.EVAL_CASES:
        cases.append((cid, lambda ws, extra=extra: [a.replace("{model}", str(md)) for a in T.EVAL] + extra
                      + ["--out", str(ws / "run.json")], {}))
    counts = {"clean": 0, "noisy": 0, "traceback": 0, "reached": 0}
    bad = []
    for i, (cid, build, _) in enumerate(cases):
        ws = tmp / f"ws{i}"
        ws.mkdir()
        argv = build(ws)
        env = getattr(build, "env", {}) if _ is None else {}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        before = T._snapshot(ws)
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = cli(argv)
            reached = False
        except _Reached:
            code, reached = None, True
        except SystemExit as e:  # argparse's own exit (usage block + error) in older CLIs
            code, reached = e.code, False
        except BaseException as e:  # noqa: BLE001 — an exception escaping main is a traceback
            code, reached = 1, False
            err.write(f"Traceback ({type(e).__name__})\n")
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        lines = err.getvalue().strip().splitlines()
        if reached or code == 0:
            kind = "reached"
        elif code == 2 and len(lines) == 1 and T._snapshot(ws) == before:
            kind = "clean"
        elif code == 2:
            kind = "noisy"
        else:
            kind = "traceback"
        counts[kind] += 1
        if kind != "clean":
            bad.append((cid, kind, lines[-1] if lines else ""))
    print(f"cases {len(cases)}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for cid, kind, line in bad:
        print(f"  {kind:<10} {cid:<34} {line[:110]}")


if __name__ == "__main__":
    main()
