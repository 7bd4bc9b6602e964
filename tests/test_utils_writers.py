"""Nothing a user owns is damaged, nothing hangs: every writer against a symlink, a FIFO, a foreign
file and a look-alike directory at the paths it writes; the results file's read-only parse and
provable tail repair; one sweep per results file; dead offload work directories swept; cache write
failures warn; inputs that pass validation finish or are refused within a stated time."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_cli_bad_input import model_dir, tripwire  # noqa: F401

from prunekit.errors import PrunekitError

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: SIGALRM interrupts a blocking open() of a FIFO."""
    def fire(*_):
        raise TimeoutError(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _state(p: Path):
    st = os.lstat(p)
    data = p.read_bytes() if stat.S_ISREG(st.st_mode) else None
    link = os.readlink(p) if stat.S_ISLNK(st.st_mode) else None
    kids = sorted(x.name for x in p.iterdir()) if stat.S_ISDIR(st.st_mode) else None
    return stat.S_IFMT(st.st_mode), st.st_ino, data, link, kids


def _plant(kind: str, path: Path, ws: Path) -> Path:
    """Put a symlink / FIFO / foreign file / directory at ``path``; returns the precious file."""
    precious = ws / "precious.txt"
    precious.write_text("the user's own bytes")
    if kind == "symlink":
        os.symlink(precious, path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "foreign":
        path.write_text("my notes\nline two")
    elif kind == "dir":
        path.mkdir()
        (path / "keep").write_text("mine")
    return precious


KINDS = ["symlink", "fifo", "foreign", "dir"]


# ----------------------------------------------------------------------------- the one writer

@pytest.mark.parametrize("kind", ["symlink", "fifo", "dir"])
def test_atomic_writer_never_follows_or_blocks(kind, tmp_path):
    from prunekit.utils import atomic_write_text
    target = tmp_path / "out.json"
    precious = _plant(kind, target, tmp_path)
    before = _state(target)
    with deadline(20), pytest.raises(PrunekitError, match="not a regular file"):
        atomic_write_text(target, "x")
    assert _state(target) == before and precious.read_text() == "the user's own bytes"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_atomic_writer_staging_name_is_unpredictable(tmp_path):
    """A symlink planted at the old fixed staging name (.<name>.tmp) is never written through."""
    from prunekit.reporting.render import _copy
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    os.symlink(precious, tmp_path / ".r.ipynb.tmp")
    src = tmp_path / "src.ipynb"
    src.write_text("{}")
    _copy(src, tmp_path / "r.ipynb")
    assert precious.read_text() == "mine" and (tmp_path / ".r.ipynb.tmp").is_symlink()
    assert (tmp_path / "r.ipynb").read_text() == "{}"


@pytest.mark.parametrize("kind", KINDS)
def test_report_writers(kind, tmp_path):
    from prunekit.reporting.render import check_out
    out = tmp_path / "reports"
    out.mkdir()
    target = out / "index.html"
    precious = _plant(kind, target, tmp_path)
    before = _state(target)
    nb = tmp_path / "00_x.ipynb"
    if kind == "foreign":  # the report directory is the renderer's own: index.html is replaced there
        check_out(out, [nb])
        return
    with deadline(20), pytest.raises(ValueError, match="not a regular file"):
        check_out(out, [nb])
    assert _state(target) == before and precious.read_text() == "the user's own bytes"


# ----------------------------------------------------------------------------- CLI outputs (prune)

@pytest.mark.parametrize("flag", ["--out", "--export-recipe"])
@pytest.mark.parametrize("kind", KINDS)
def test_prune_outputs(flag, kind, tmp_path, capsys, model_dir, tripwire):  # noqa: F811
    from test_cli_bad_input import PRUNE

    from prunekit.cli import main
    target = tmp_path / "target"
    precious = _plant(kind, target, tmp_path)
    before = _state(target)
    argv = [a.replace("{model}", str(model_dir)) for a in PRUNE] + ["--metric", "wanda", flag, str(target)]
    with deadline(60):
        assert main(argv) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert _state(target) == before and precious.read_text() == "the user's own bytes"


@pytest.mark.parametrize("kind", KINDS)
def test_save_model_target(kind, tmp_path, capsys, model_dir, tripwire):  # noqa: F811
    from test_cli_bad_input import PRUNE

    from prunekit.cli import main
    target = tmp_path / "saved"
    precious = _plant(kind, target, tmp_path)
    before = _state(target)
    argv = [a.replace("{model}", str(model_dir)) for a in PRUNE] + ["--save-model", str(target)]
    with deadline(60):
        assert main(argv) == 2
    assert _state(target) == before and precious.read_text() == "the user's own bytes"


class _Tok:
    def save_pretrained(self, d):
        Path(d, "tokenizer.json").write_text("{}")


def test_save_keeps_lookalike_folders_and_removes_dead_staging(tmp_path):
    """A user's folder named like a staging directory of a dead PID survives; prunekit's own
    (marked) staging of a dead writer is removed."""
    from conftest import tiny_model

    from prunekit.core import cache
    from prunekit.core.saving import save_dir
    dead = 2 ** 22 + 12345  # above pid_max's default: never alive
    mine = tmp_path / f".m.tmp-{dead}-abc"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    link = tmp_path / f".m.tmp-{dead}-lnk"
    os.symlink(mine, link)
    stale = tmp_path / f".m.tmp-{dead}-old"
    stale.mkdir()
    (stale / cache.STAGING_MARKER).write_text(str(dead))
    save_dir(tiny_model(), _Tok(), tmp_path / "m")
    assert (mine / "thesis.tex").read_text() == "years of work" and link.is_symlink()
    assert not stale.exists()
    saved = tmp_path / "m"
    assert (saved / "config.json").is_file() and not (saved / cache.STAGING_MARKER).exists()


# ----------------------------------------------------------------------------- results file

def _rec(cell: str, **kw) -> dict:
    return {"cell": cell, "settings": {"model": "m"}, "status": "ok", **kw}


def _line(rec) -> bytes:
    return (json.dumps(rec) + "\n").encode()


def test_results_foreign_file_untouched(tmp_path):
    from prunekit.experiments.sweep.store import read_results, repair_tail
    p = tmp_path / "notes.txt"
    p.write_bytes(b"my notes\nline two")
    for fn in (read_results, repair_tail):
        with pytest.raises(PrunekitError, match="not a prunekit results file"):
            fn(p)
    assert p.read_bytes() == b"my notes\nline two"
    p.write_bytes(_line(_rec("a")) + b"line two")  # our records, then a user's tail
    with pytest.raises(PrunekitError, match="last line"):
        repair_tail(p)
    assert p.read_bytes().endswith(b"line two")


def test_results_complete_record_without_newline_is_kept(tmp_path):
    from prunekit.experiments.sweep.store import append_record, read_results, repair_tail
    p = tmp_path / "r.jsonl"
    p.write_bytes(_line(_rec("a")) + _line(_rec("b"))[:-1])
    assert [r["cell"] for r in read_results(p)] == ["a", "b"]
    repair_tail(p)
    append_record(p, _rec("c"))
    assert [r["cell"] for r in read_results(p)] == ["a", "b", "c"]


def test_results_torn_record_is_cut(tmp_path):
    from prunekit.experiments.sweep.store import append_record, read_results, repair_tail
    p = tmp_path / "r.jsonl"
    whole = _line(_rec("a"))
    p.write_bytes(whole + _line(_rec("b"))[:17])
    assert [r["cell"] for r in read_results(p)] == ["a"]
    assert p.read_bytes().startswith(whole) and len(p.read_bytes()) > len(whole)  # reading changed nothing
    repair_tail(p)
    assert p.read_bytes() == whole
    append_record(p, {"status": "ok", "settings": {}, "cell": "c"})
    assert p.read_bytes().splitlines()[-1].startswith(b'{"cell": "c"')  # "cell" first: a torn tail is ours


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_append_never_follows_or_blocks(kind, tmp_path):
    from prunekit.experiments.sweep.store import ResultsLock, append_record
    p = tmp_path / "r.jsonl"
    precious = _plant(kind, p, tmp_path)
    before = _state(p)
    with deadline(20):
        with pytest.raises((PrunekitError, OSError)):
            append_record(p, _rec("a"))
        with pytest.raises(PrunekitError):
            with ResultsLock(p):
                pass
    assert _state(p) == before and precious.read_text() == "the user's own bytes"


def test_second_sweep_on_one_results_file_refuses(tmp_path, capsys, model_dir, tripwire):  # noqa: F811
    """A second sweep on the same results file (flock is per open file, so in-process is the same as
    another process): one line, exit 2, no cell run, the file unchanged."""
    from prunekit.cli import main
    from prunekit.experiments.sweep.store import ResultsLock
    p = tmp_path / "r.jsonl"
    p.write_bytes(_line(_rec("a")))
    grid = tmp_path / "g.yaml"
    grid.write_text(f"models: ['{model_dir}']\nallocations: [uniform]\nmetrics: [magnitude]\n"
                    "calibration: {samples: 2, seqlen: 32}\nevaluation: {seqlen: 64, windows: 1}\n")
    capsys.readouterr()
    with ResultsLock(p):
        code = main(["sweep", str(grid), "--out", str(p), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "another sweep is writing" in err and len(err.splitlines()) == 1, err
    assert p.read_bytes() == _line(_rec("a"))


# ----------------------------------------------------------------------------- tasks --write

def test_tasks_replace_own_files_only(tmp_path, capsys):
    from prunekit.cli import main
    d = tmp_path / "t"
    assert main(["tasks", "--write", str(d), "--tasks", "rte"]) == 0
    first = (d / "prunekit_rte.yaml").read_text()
    assert main(["tasks", "--write", str(d), "--tasks", "rte"]) == 0  # its own file: replaced
    assert (d / "prunekit_rte.yaml").read_text() == first
    out = capsys.readouterr().out
    assert "pretrained=PRUNED_MODEL_DIR,dtype=float32" in out


# ----------------------------------------------------------------------------- offload work directories

def test_killed_offload_run_is_swept_by_the_next(tmp_path):
    """A run killed with SIGKILL leaves its work directory; the next run's make_work_dir removes it,
    and leaves look-alikes (no owner file, a symlink, a live owner, a foreign file) alone."""
    from prunekit.core.offload import OWNER_FILE, clean_work_dirs, make_work_dir
    root = tmp_path / "offload"
    code = ("import os, sys; from pathlib import Path; from prunekit.core.offload import make_work_dir; "
            "d = make_work_dir(Path(sys.argv[1])); (d / 'block0000-1.safetensors').write_bytes(b'x' * 1000); "
            "os.kill(os.getpid(), 9)")
    r = subprocess.run([sys.executable, "-c", code, str(root)], cwd=ROOT, timeout=120)
    assert r.returncode == -9
    (left,) = list(root.iterdir())
    lookalike = root / "run-4206666-abcdef-x"
    lookalike.mkdir()
    (lookalike / "data").write_text("mine")
    live = root / f"run-{os.getpid()}-abcdef-live"
    live.mkdir()
    (live / OWNER_FILE).write_text(str(os.getpid()))
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / OWNER_FILE).write_text("4206667")
    os.symlink(precious, root / "run-4206667-abcdef-l")
    (root / "run-4206668-abcdef-f").write_text("a file")
    new = make_work_dir(root)
    assert not left.exists() and new.is_dir()
    assert (lookalike / "data").read_text() == "mine" and live.is_dir() and (precious / OWNER_FILE).exists()
    assert (root / "run-4206667-abcdef-l").is_symlink() and (root / "run-4206668-abcdef-f").is_file()
    assert clean_work_dirs(root) == []


# ----------------------------------------------------------------------------- cache write failures

def test_token_cache_write_failure_warns(tmp_path, monkeypatch):
    import errno

    import numpy as np

    from prunekit.core import cache

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(np, "savez", full)
    with pytest.warns(cache.CacheWarning, match="without caching"):
        cache.save_arrays(tmp_path / "t.npz", {"a": np.zeros(3)}, {"x": 1})
    assert list(tmp_path.iterdir()) == []


def test_stats_cache_write_failure_warns(tmp_path, monkeypatch):
    import errno

    import torch

    from prunekit import utils
    from prunekit.core import cache
    from prunekit.scoring.statistics import StatsCache

    def big(f, *a, **k):
        f.write(b"x" * 100)
        raise OSError(errno.EFBIG, "File too large")
    monkeypatch.setattr(utils, "write_safetensors", big)
    sc = StatsCache(tmp_path)
    with pytest.warns(cache.CacheWarning, match="without caching"):
        sc.save("k", {"a": torch.zeros(2)})
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


# ----------------------------------------------------------------------------- preflight and loading

def test_nan_weights_refused(tmp_path, capsys):
    from conftest import tiny_model

    from prunekit.cli import main
    m = tiny_model()
    with __import__("torch").no_grad():
        m.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    d = tmp_path / "nan"
    m.save_pretrained(d, safe_serialization=True)
    from conftest import hf_byte_tokenizer
    hf_byte_tokenizer().save_pretrained(d)
    capsys.readouterr()
    assert main(["eval", "--model", str(d), "--eval-windows", "1", "--eval-seqlen", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "NaN or infinite" in err and "layers.1.mlp.up_proj" in err


# ----------------------------------------------------------------------------- bounded time

SLOW = pytest.mark.slow  # reuses the user's cache (tiny-llama built once), not a fresh one per test
BOUNDED = [  # (id, argv, exit code, seconds) on tiny-llama; every one passes the argument parser
    pytest.param("calib-more-samples-than-windows",
                 ["prune", "--model", "tiny-llama", "--sparsity", "0.5", "--calib-seqlen", "8192", "--calib-samples",
                  "200", "--eval-windows", "1", "--eval-seqlen", "64"], 2, 60, marks=SLOW),
    ("ray-address-closed-port", ["sweep", "{grid}", "--out", "{ws}/r.jsonl", "--ray-address", "127.0.0.1:1"], 2, 60),
    ("config-fifo", ["eval", "--model", "{fifo_model}", "--eval-windows", "1", "--eval-seqlen", "64"], 2, 30),
    ("weights-fifo", ["eval", "--model", "{fifo_weights}", "--eval-windows", "1", "--eval-seqlen", "64"], 2, 30),
    pytest.param("tiny-run", ["prune", "--model", "tiny-llama", "--sparsity", "0.5", "--calib-samples", "2",
                              "--calib-seqlen", "64", "--eval-windows", "1", "--eval-seqlen", "64", "--out",
                              "{ws}/run.json"], 0, 240, marks=SLOW),
]


@pytest.mark.parametrize("cid, argv, code, seconds", BOUNDED,
                         ids=[b.values[0] if hasattr(b, "values") else b[0] for b in BOUNDED])
def test_bounded_time(cid, argv, code, seconds, tmp_path, model_dir, capsys):  # noqa: F811
    import shutil

    from prunekit.cli import main
    ws = tmp_path / "ws"
    ws.mkdir()
    grid = tmp_path / "g.yaml"
    grid.write_text("models: [tiny-llama]\nallocations: [uniform]\nmetrics: [magnitude]\n"
                    "calibration: {samples: 2, seqlen: 32}\nevaluation: {seqlen: 64, windows: 1}\n")
    fm, fw = tmp_path / "fm", tmp_path / "fw"
    for d, name in ((fm, "config.json"), (fw, "model.safetensors")):
        shutil.copytree(model_dir, d)
        (d / name).unlink()
        os.mkfifo(d / name)
    argv = [a.replace("{grid}", str(grid)).replace("{ws}", str(ws)).replace("{fifo_model}", str(fm))
            .replace("{fifo_weights}", str(fw)) for a in argv]
    t0 = time.monotonic()
    if "--ray-address" in argv:  # Ray's C++ retry loop ignores SIGALRM: a child process with a timeout
        try:
            r = subprocess.run([sys.executable, "-m", "prunekit.cli", *argv], capture_output=True, text=True,
                               cwd=ROOT, timeout=seconds)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running after {seconds} s")
        got, err = r.returncode, [ln for ln in r.stderr.splitlines() if ln.startswith("prunekit")]
        err = "\n".join(err)
    else:
        with deadline(seconds):
            got = main(argv)
        err = capsys.readouterr().err.strip()
    wall = time.monotonic() - t0
    assert got == code, err
    if code == 2:
        assert len(err.splitlines()) == 1, err
    assert wall < seconds


@pytest.mark.slow
def test_calib_windows_refused_before_load(capsys, tmp_path, tripwire):  # noqa: F811
    """The byte bound cannot refute 200 windows of 8192 tokens in C4; the tokenizer count can,
    before any model loads (the tripwire fails the test if one does)."""
    from test_cli_bad_input import ModelLoaded

    from prunekit.cli import main
    argv = ["prune", "--model", "tiny-llama", "--sparsity", "0.5", "--calib-seqlen", "8192", "--calib-samples",
            "200", "--eval-windows", "1", "--eval-seqlen", "64", "--out", str(tmp_path / "r.json")]
    try:
        code = main(argv)
    except ModelLoaded:
        pytest.fail("the model loaded before the calibration windows were counted")
    err = capsys.readouterr().err.strip()
    assert code == 2 and "distinct windows" in err and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []
