"""Bad input never costs a run: a table of bad inputs across every CLI flag family. Each must give
exit code 2, exactly one line on stderr, no file written anywhere, and no model loaded (the model
loaders are replaced by a tripwire that aborts the test if any case gets that far)."""
from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import sys
from pathlib import Path

import pytest

from prunekit.cli import main

SHARED = Path(os.environ.get("PRUNEKIT_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


class ModelLoaded(BaseException):
    """Raised by the tripwire: a bad input reached the model loader (late or accepted)."""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny LLaMA (4 blocks, 512 positions) saved as safetensors + config: what preflight reads."""
    from conftest import tiny_model
    d = tmp_path_factory.mktemp("models") / "tiny"
    tiny_model("llama").save_pretrained(d, safe_serialization=True)
    return d


@pytest.fixture
def tripwire(monkeypatch):
    def boom(*a, **k):
        raise ModelLoaded("a model was loaded")
    import prunekit.core.aliases as A
    import prunekit.core.loading as L
    import prunekit.experiments.session as S
    for mod, name in [(L, "load_model"), (S, "load_model"), (A, "dense_cache_for_gguf"), (A, "_tiny_llama")]:
        monkeypatch.setattr(mod, name, boom)
    monkeypatch.setattr(L.aliases, "dense_cache_for_gguf", boom)
    monkeypatch.setitem(A.ALIASES, "tiny-llama", boom)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size if p.is_file() else 0)
            for p in root.rglob("*") if not p.is_symlink() or p.exists()}


# ----------------------------------------------------------------------------- setups for path cases

def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _model_copy(md: Path, ws: Path, edit) -> str:
    d = ws / "m"
    shutil.copytree(md, d)
    edit(d)
    return str(d)


def _set_type(t):
    def edit(d):
        cfg = json.loads((d / "config.json").read_text())
        cfg["model_type"] = t
        (d / "config.json").write_text(json.dumps(cfg))
    return edit


def _truncate(d):
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])


def _pickle_only(d):
    (d / "model.safetensors").unlink()
    _write(d / "pytorch_model.bin", b"\x80\x04not really a pickle")


def _data_dir(ws: Path, broken: str, data: bytes | None) -> Path:
    """A copy of the shared data layout (symlinks) with one file replaced or removed."""
    dd = ws / "data"
    for rel in ("wikitext-2-raw/wiki.test.raw", "c4/c4-train.00000-of-01024.first1000.jsonl",
                "ptb/ptb.test.txt", "ptb/ptb.valid.txt"):
        (dd / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel != broken:
            os.symlink(SHARED / rel, dd / rel)
        elif data is not None:
            _write(dd / rel, data)
    return dd


# A case: (id, extra argv (with {model} {ws} placeholders), needle in the error, optional setup(ws, model_dir)
# returning a dict of substitutions / env, base command)
PRUNE = ["prune", "--model", "{model}", "--sparsity", "0.5", "--eval-windows", "1", "--calib-samples", "2",
         "--calib-seqlen", "32", "--eval-seqlen", "64"]
EVAL = ["eval", "--model", "{model}", "--eval-windows", "1", "--eval-seqlen", "64"]

CASES = [
    # sparsity / N:M / allocation / bounds
    ("sparsity-1", ["--sparsity", "1.0"], "--sparsity"),
    ("sparsity-neg", ["--sparsity", "-0.1"], "--sparsity"),
    ("sparsity-nan", ["--sparsity", "nan"], "--sparsity"),
    ("sparsity-inf", ["--sparsity", "inf"], "--sparsity"),
    ("sparsity-text", ["--sparsity", "half"], "--sparsity"),
    ("metric", ["--metric", "obs"], "--metric"),
    ("nm-equal", ["--nm", "4:4"], "0 < N < M"),
    ("nm-syntax", ["--nm", "2-4"], "bad N:M"),
    ("nm-zero", ["--nm", "0:4"], "0 < N < M"),
    ("nm-contradicts", ["--nm", "2:4", "--sparsity", "0.6"], "contradicts"),
    ("nm-nonuniform", ["--nm", "2:4", "--allocation", "owl"], "--allocation uniform"),
    ("nm-absorption", ["--nm", "2:4", "--absorption-correction"], "--absorption-correction"),
    ("allocation", ["--allocation", "nope"], "--allocation"),
    ("smin-above-smax", ["--s-min", "0.6", "--s-max", "0.5"], "--s-min"),
    ("target-above-smax", ["--sparsity", "0.995"], "--s-max"),
    ("smax-1", ["--s-max", "1.0"], "--s-max"),
    ("smin-nan", ["--s-min", "nan"], "--s-min"),
    # calibration
    ("calib-dataset", ["--calib-dataset", "pile"], "--calib-dataset"),
    ("calib-samples-0", ["--calib-samples", "0"], "--calib-samples"),
    ("calib-samples-neg", ["--calib-samples", "-1"], "--calib-samples"),
    ("calib-seqlen-1", ["--calib-seqlen", "1"], "--calib-seqlen"),
    ("calib-seqlen-long", ["--calib-seqlen", "100000"], "--calib-seqlen"),
    ("batch-size-0", ["--batch-size", "0"], "--batch-size"),
    ("batch-size-neg", ["--batch-size", "-2"], "--batch-size"),
    # evaluation
    ("eval-dataset", ["--eval", "wikitext3"], "wikitext3"),
    ("eval-seqlen-0", ["--eval-seqlen", "0"], "--eval-seqlen"),
    ("eval-seqlen-neg", ["--eval-seqlen", "-5"], "--eval-seqlen"),
    ("eval-seqlen-long", ["--eval-seqlen", "100000"], "--eval-seqlen"),
    ("eval-windows-0", ["--eval-windows", "0"], "--eval-windows"),
    ("eval-windows-neg", ["--eval-windows", "-1"], "--eval-windows"),
    ("zero-shot-task", ["--zero-shot", "nope"], "zero-shot task"),
    ("zero-shot-mixed", ["--zero-shot", "boolq,nope"], "'nope'"),
    ("zero-shot-limit-0", ["--zero-shot", "boolq", "--zero-shot-limit", "0"], "--zero-shot-limit"),
    ("zero-shot-limit-neg", ["--zero-shot", "boolq", "--zero-shot-limit", "-3"], "--zero-shot-limit"),
    # run settings
    ("seed-neg", ["--seed", "-1"], "--seed"),
    ("seed-huge", ["--seed", str(2**32)], "--seed"),
    ("seed-text", ["--seed", "abc"], "--seed"),
    ("threads-neg", ["--threads", "-3"], "--threads"),
    ("threads-0", ["--threads", "0"], "--threads"),
    ("device-banana", ["--device", "banana"], "banana"),
    ("device-cuda", ["--device", "cuda"], "CUDA"),
    ("device-cuda7", ["--device", "cuda:7"], "cuda:7"),
    ("device-mps", ["--device", "mps"], "mps"),
    ("dtype-int8", ["--dtype", "int8"], "--dtype"),
    ("unknown-flag", ["--sparsiti", "0.5"], "unrecognized"),
    ("out-empty", ["--out", ""], "--out needs a path"),
    ("save-empty", ["--save-model", ""], "--save-model needs a path"),
    ("nm-width", ["--nm", "3:7", "--sparsity", str(3 / 7)], "does not divide"),
    ("svnup-heldout-dataset", ["--allocation", "svnup", "--svnup-heldout", "pile"], "pile"),
    # method options (the registry's contract)
    ("owl-flag-without-owl", ["--owl-m", "3"], "belongs to allocation 'owl'"),
    ("owl-lambda-range", ["--allocation", "owl", "--owl-lambda", "2"], "lam"),
    ("owl-m-nan", ["--allocation", "owl", "--owl-m", "nan"], "finite"),
    ("owl-metric-choice", ["--allocation", "owl", "--owl-metric", "obs"], "metric"),
    ("alpha-epsilon-neg", ["--allocation", "alphapruning", "--alpha-epsilon", "-1"], "epsilon"),
    ("alpha-epsilon-nan", ["--allocation", "alphapruning", "--alpha-epsilon", "nan"], "epsilon"),
    ("alpha-bool", ["--allocation", "alphapruning", "--alpha-fix-lower-bound", "maybe"], "true/false"),
    ("atp-beta-neg", ["--allocation", "atp", "--atp-beta", "-0.1"], "beta"),
    ("mrp-k-0", ["--allocation", "mrp", "--mrp-k", "0"], "'k'"),
    ("mrp-delta-text", ["--allocation", "mrp", "--mrp-delta", "abc"], "--mrp-delta"),
    ("mrp-scap", ["--allocation", "mrp", "--mrp-s-cap", "1.5"], "s_cap"),
    # once refused only inside the method, after the model had loaded: now the contract's bounds
    ("owl-m-0", ["--allocation", "owl", "--owl-m", "0"], "'m'"),
    ("alpha-epsilon-1", ["--allocation", "alphapruning", "--alpha-epsilon", "1.0"], "epsilon"),
    ("mrp-delta-0", ["--allocation", "mrp", "--mrp-delta", "0"], "delta"),
    ("mrp-delta-tiny", ["--allocation", "mrp", "--mrp-delta", "1e-300"], "delta"),
    ("mrp-m-0", ["--allocation", "mrp", "--mrp-m", "0"], "'m'"),
    ("mrp-scap-1", ["--allocation", "mrp", "--mrp-s-cap", "1"], "s_cap"),
    ("absorption-eta-0", ["--allocation", "absorption", "--absorption-eta", "0"], "eta"),
    ("absorption-clip-0", ["--allocation", "absorption", "--absorption-clip", "0"], "clip"),
    ("absorption-probe-seqlen-1", ["--allocation", "absorption", "--absorption-probe-seqlen", "1"], "probe_seqlen"),
    ("absorption-wraps-itself", ["--allocation", "absorption", "--absorption-base", "absorption"], "absorption"),
    ("svnup-window-1000", ["--allocation", "svnup", "--svnup-window", "1000"], "window"),
    ("svnup-window-blocks", ["--allocation", "svnup", "--svnup-window", "5"], "4 blocks"),
    ("svnup-window-0", ["--allocation", "svnup", "--svnup-window", "0"], "window"),
    ("svnup-temperature-0", ["--allocation", "svnup", "--svnup-temperature", "0"], "temperature"),
    ("absorption-gamma-nan", ["--absorption-correction", "--absorption-gamma", "nan"], "gamma"),
    ("absorption-gamma-inf", ["--allocation", "owl", "--absorption-correction", "--absorption-gamma", "inf"], "gamma"),
    ("absorption-base", ["--allocation", "absorption", "--absorption-base", "nope"], "nope"),
    ("absorption-base-options-list", ["--allocation", "absorption", "--absorption-base-options", "[1]"],
     "base_options"),
    ("absorption-base-options-json", ["--allocation", "absorption", "--absorption-base-options", "{bad"],
     "cannot parse"),
    ("absorption-base-option-range", ["--allocation", "owl", "--absorption-correction", "--owl-lambda", "-1"], "lam"),
]

# Path cases: setup(ws, model_dir) -> substitutions for {model}, {out}, {save}, and env
PATH_CASES = [
    ("model-unknown", lambda ws, md: {"model": "no-such-model"}, "unknown model"),
    ("model-hub-offline", lambda ws, md: {"model": "nobody/no-such-model"}, "Hugging Face hub"),
    ("model-gguf-missing", lambda ws, md: {"model": str(ws / "x.gguf")}, "GGUF file not found"),
    ("model-gguf-magic", lambda ws, md: {"model": str(_write(ws / "x.gguf", b"NOPE" + b"\0" * 64))}, "bad magic"),
    ("model-gguf-truncated", lambda ws, md: {"model": str(_write(ws / "x.gguf", b"GGUF\x03\0\0\0"))}, "GGUF header"),
    ("model-dir-no-config", lambda ws, md: {"model": str((ws / "empty").mkdir() or ws / "empty")}, "config.json"),
    ("model-config-json", lambda ws, md: {"model": _model_copy(md, ws, lambda d: (d / "config.json").write_text("{"))},
     "not valid JSON"),
    ("model-type-unknown", lambda ws, md: {"model": _model_copy(md, ws, _set_type("banana_lm"))}, "banana_lm"),
    ("model-type-missing", lambda ws, md: {"model": _model_copy(md, ws, _set_type(None))}, "model_type"),
    ("model-truncated", lambda ws, md: {"model": _model_copy(md, ws, _truncate)}, "truncated"),
    ("model-pickle-only", lambda ws, md: {"model": _model_copy(md, ws, _pickle_only)}, "pickle"),
    ("model-plain-file", lambda ws, md: {"model": str(_write(ws / "weights.txt", b"x"))}, "neither"),
    ("out-missing-parent", lambda ws, md: {"out": str(ws / "nope" / "r.json")}, "does not exist"),
    ("out-is-dir", lambda ws, md: {"out": str(ws)}, "directory"),
    ("out-under-file", lambda ws, md: {"out": str(_write(ws / "f", b"x") / "r.json")}, "does not exist"),
    ("out-symlink", lambda ws, md: {"out": str(_link(ws))}, "symlink"),
    ("out-fifo", lambda ws, md: {"out": str(_fifo(ws))}, "not a regular file"),
    ("save-under-file", lambda ws, md: {"save": str(_write(ws / "f", b"x") / "model")}, "does not exist"),
    ("save-missing-parent", lambda ws, md: {"save": str(ws / "nope" / "model")}, "does not exist"),
    ("save-nonempty", lambda ws, md: {"save": str(_write(ws / "d" / "keep", b"x").parent)}, "not empty"),
    ("save-is-file", lambda ws, md: {"save": str(_write(ws / "f", b"x"))}, "not a directory"),
    ("save-symlink", lambda ws, md: {"save": str(_dirlink(ws))}, "symlink"),
    ("save-equals-out", lambda ws, md: {"save": str(ws / "same"), "out": str(ws / "same")}, "same path"),
    ("data-dir-missing", lambda ws, md: {"env": {"PRUNEKIT_DATA_DIR": str(ws / "nowhere")}}, "does not exist"),
    ("data-calib-empty", lambda ws, md: {"env": {"PRUNEKIT_DATA_DIR": str(
        _data_dir(ws, "c4/c4-train.00000-of-01024.first1000.jsonl", b""))}}, "empty"),
    ("data-calib-not-jsonl", lambda ws, md: {"env": {"PRUNEKIT_DATA_DIR": str(
        _data_dir(ws, "c4/c4-train.00000-of-01024.first1000.jsonl", b"plain text\n"))}}, "JSON lines"),
    ("data-eval-binary", lambda ws, md: {"env": {"PRUNEKIT_DATA_DIR": str(
        _data_dir(ws, "wikitext-2-raw/wiki.test.raw", bytes(range(256)) * 4))}}, "not UTF-8"),
    ("data-eval-nul", lambda ws, md: {"env": {"PRUNEKIT_DATA_DIR": str(
        _data_dir(ws, "wikitext-2-raw/wiki.test.raw", b"text\0text\n"))}}, "NUL"),
    ("data-eval-missing", lambda ws, md: {"env": {"PRUNEKIT_DATA_DIR": str(
        _data_dir(ws, "wikitext-2-raw/wiki.test.raw", None))}}, "not found"),
    ("data-calib-docs-short", lambda ws, md: {"env": {"PRUNEKIT_DATA_DIR": str(
        _data_dir(ws, "c4/c4-train.00000-of-01024.first1000.jsonl", b'{"text": "short"}\n' * 5))}}, "--calib-seqlen"),
    ("data-eval-short", lambda ws, md: {"env": {"PRUNEKIT_DATA_DIR": str(
        _data_dir(ws, "wikitext-2-raw/wiki.test.raw", b"= a tiny text =\n"))}}, "--eval-seqlen"),
    ("env-threads", lambda ws, md: {"env": {"PRUNEKIT_THREADS": "abc"}}, "PRUNEKIT_THREADS"),
    ("env-cache-file", lambda ws, md: {"env": {"PRUNEKIT_CACHE": str(_write(ws / "cachefile", b"x") / "c")}},
     "PRUNEKIT_CACHE"),
    ("zero-shot-data-missing", lambda ws, md: {"env": {"PRUNEKIT_DATA_DIR": str(
        _data_dir(ws, "ptb/ptb.test.txt", b"x" * 100))}, "argv": ["--zero-shot", "boolq"]}, "boolq"),
    ("data-ptb-whitespace", lambda ws, md: {"env": {"PRUNEKIT_DATA_DIR": str(
        _data_dir(ws, "ptb/ptb.valid.txt", b"  \n\n  "))}, "argv": ["--calib-dataset", "ptb"]}, "empty"),
]

EVAL_CASES = [
    ("eval-seqlen-0", ["--eval-seqlen", "0"], "--eval-seqlen"),
    ("eval-device", ["--device", "banana"], "banana"),
    ("eval-windows-0", ["--eval-windows", "0"], "--eval-windows"),
    ("eval-zero-shot", ["--zero-shot", "nope"], "zero-shot task"),
    ("eval-sparsity-flag", ["--sparsity", "0.5"], "unrecognized"),
    ("eval-seed", ["--seed", "-1"], "--seed"),
]


def _link(ws):
    target = _write(ws / "precious.txt", b"keep me")
    os.symlink(target, ws / "link.json")
    return ws / "link.json"


def _dirlink(ws):
    (ws / "realdir").mkdir()
    os.symlink(ws / "realdir", ws / "dirlink")
    return ws / "dirlink"


def _fifo(ws):
    os.mkfifo(ws / "pipe")
    return ws / "pipe"


def _run_case(capsys, ws: Path, argv: list[str], fn=main):
    """Run ``fn(argv)``: exit 2, one line, no traceback, nothing under ``ws`` written, changed or removed."""
    capsys.readouterr()
    before = _snapshot(ws)
    try:
        code = fn(argv)
    except ModelLoaded:
        pytest.fail(f"bad input reached the model loader: {argv}")
    err = capsys.readouterr().err.strip()
    assert code == 2, (code, err)
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert _snapshot(ws) == before, "a file was written, changed or removed"
    return err


@pytest.mark.parametrize("cid, extra, needle", CASES, ids=[c[0] for c in CASES])
def test_prune_bad_flag(cid, extra, needle, capsys, tmp_path, model_dir, tripwire):
    ws = tmp_path / "ws"
    ws.mkdir()
    argv = [a.replace("{model}", str(model_dir)) for a in PRUNE] + ["--out", str(ws / "run.json"),
                                                                    "--save-model", str(ws / "saved")] + extra
    err = _run_case(capsys, ws, argv)
    assert needle in err, err


@pytest.mark.parametrize("cid, setup, needle", PATH_CASES, ids=[c[0] for c in PATH_CASES])
def test_prune_bad_path(cid, setup, needle, capsys, tmp_path, model_dir, tripwire, monkeypatch):
    ws = tmp_path / "ws"
    ws.mkdir()
    sub = setup(ws, model_dir)
    for k, v in sub.get("env", {}).items():
        monkeypatch.setenv(k, v)
    argv = [a.replace("{model}", sub.get("model", str(model_dir))) for a in PRUNE] + sub.get("argv", [])
    argv += ["--out", sub.get("out", str(ws / "run.json")), "--save-model", sub.get("save", str(ws / "saved"))]
    err = _run_case(capsys, ws, argv)
    assert needle in err, err


@pytest.mark.parametrize("cid, extra, needle", EVAL_CASES, ids=[c[0] for c in EVAL_CASES])
def test_eval_bad_flag(cid, extra, needle, capsys, tmp_path, model_dir, tripwire):
    ws = tmp_path / "ws"
    ws.mkdir()
    argv = [a.replace("{model}", str(model_dir)) for a in EVAL] + extra + ["--out", str(ws / "run.json")]
    err = _run_case(capsys, ws, argv)
    assert needle in err, err


def test_matrix_size():
    assert len(CASES) + len(PATH_CASES) + len(EVAL_CASES) >= 60


# ----------------------------------------------------------------------------- special files as --out

@pytest.mark.parametrize("kind", ["device", "fifo", "symlink", "dev-null"])
def test_out_never_replaces_a_special_file(kind, capsys, tmp_path, model_dir, tripwire):
    ws = tmp_path / "ws"
    ws.mkdir()
    if kind == "device":
        if os.geteuid() != 0:
            pytest.skip("mknod of a device node needs root")
        target = ws / "null"
        os.mknod(target, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    elif kind == "fifo":
        target = ws / "pipe"
        os.mkfifo(target)
    elif kind == "symlink":
        real = _write(ws / "real.json", b"precious")
        target = ws / "link.json"
        os.symlink(real, target)
    else:
        target = Path("/dev/null")
    before = os.lstat(target)
    argv = [a.replace("{model}", str(model_dir)) for a in PRUNE] + ["--out", str(target)]
    err = _run_case(capsys, ws, argv)
    assert "--out" in err
    after = os.lstat(target)
    assert (stat.S_IFMT(after.st_mode), after.st_ino, after.st_rdev) == \
           (stat.S_IFMT(before.st_mode), before.st_ino, before.st_rdev)
    if kind == "symlink":
        assert (ws / "real.json").read_bytes() == b"precious"


def test_atomic_write_refuses_special_files(tmp_path):
    """Defence in depth: the writer itself never renames over a FIFO or a symlink."""
    from prunekit.errors import PrunekitError
    from prunekit.utils import atomic_write_json
    os.mkfifo(tmp_path / "p")
    os.symlink(tmp_path / "elsewhere", tmp_path / "l")
    for name in ("p", "l"):
        with pytest.raises(PrunekitError, match="not a regular file"):
            atomic_write_json(tmp_path / name, {"a": 1})
    assert stat.S_ISFIFO(os.lstat(tmp_path / "p").st_mode) and (tmp_path / "l").is_symlink()


# ----------------------------------------------------------------------------- no traceback, ever

def test_internal_error_is_one_line_exit_1(capsys, tmp_path, model_dir, monkeypatch):
    """An unexpected bug after validation: one line naming it and the --debug hint, exit 1, no JSON."""
    import prunekit.experiments.session as S

    def bug(*a, **k):
        raise ZeroDivisionError("simulated bug")
    monkeypatch.setattr(S, "load_model", bug)
    out = tmp_path / "run.json"
    argv = [a.replace("{model}", str(model_dir)) for a in PRUNE] + ["--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--debug" in err and "ZeroDivisionError" in err, err
    assert not out.exists()
    with pytest.raises(ZeroDivisionError):
        main(argv + ["--debug"])


def test_library_load_error_names_the_model(capsys, tmp_path, model_dir, monkeypatch):
    """A library exception while loading (here an OSError) becomes a one-line error naming the input."""
    import prunekit.experiments.session as S

    def oserr(*a, **k):
        raise OSError("Unable to load weights from checkpoint file\nsecond line")
    monkeypatch.setattr(S, "load_model", oserr)
    argv = [a.replace("{model}", str(model_dir)) for a in PRUNE] + ["--out", str(tmp_path / "r.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(model_dir) in err and "Unable to load weights" in err


def test_help_and_version(capsys):
    assert main(["--version"]) == 0
    from prunekit import __version__
    assert capsys.readouterr().out.strip() == f"prunekit {__version__}"
    assert main(["prune", "--help"]) == 0
    h = capsys.readouterr().out
    for group in ("owl options (--allocation owl)", "svnup options (--allocation svnup)", "calibration:"):
        assert group in h
    assert "(default: 128)" in h and "(default: c4)" in h and "{magnitude,wanda,sparsegpt}" in h
    assert "range: [1, 16 and #blocks]" in " ".join(h.split())  # argparse may wrap the line


def test_progress_policy(monkeypatch):
    import io

    from prunekit.cli.commands import progress_wanted

    class TTY(io.StringIO):
        def isatty(self):
            return True
    for var in ("TQDM_DISABLE", "PRUNEKIT_PROGRESS"):
        monkeypatch.delenv(var, raising=False)
    assert progress_wanted(False, stream=TTY()) is True
    assert progress_wanted(False, stream=io.StringIO()) is False        # a log file
    assert progress_wanted(False, True, stream=io.StringIO()) is True   # --progress
    assert progress_wanted(True, True, stream=TTY()) is False           # --quiet wins
    monkeypatch.setenv("PRUNEKIT_PROGRESS", "1")
    assert progress_wanted(False, stream=io.StringIO()) is True
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert progress_wanted(False, stream=TTY()) is False


def test_bars_off_silences_plain_tqdm_and_restores(capsys):
    """transformers' GGUF and "Loading weights" bars are plain tqdm bars without disable=."""
    from tqdm import tqdm

    from prunekit.cli.commands import bars_off
    with bars_off():
        for _ in tqdm(range(3), desc="inside"):
            pass
        from transformers.utils import logging as hf
        assert not hf.is_progress_bar_enabled()
    assert "inside" not in capsys.readouterr().err
    bar = tqdm(range(1), desc="after", file=sys.stderr)
    assert bar.disable is False  # restored
    bar.close()


def test_preflight_gguf_header_reads_block_count(tmp_path):
    """The hand-rolled GGUF KV reader against a file written with gguf's own writer."""
    gguf = pytest.importorskip("gguf")
    p = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(p), "llama")
    w.add_block_count(7)
    w.add_context_length(321)
    w.add_token_list(["a", "bb", "ccc"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    from prunekit.core.preflight import gguf_header
    h = gguf_header(p)
    assert h["general.architecture"] == "llama" and h["llama.block_count"] == 7
    assert h["llama.context_length"] == 321
    assert struct.calcsize("<Q") == 8


def test_every_numeric_method_option_is_bounded_and_rejects_nan_inf():
    """The registry contract is complete: every int/float option of every method declares a lower
    bound, and NaN/inf/-inf are refused by the contract itself (not by running the method)."""
    from prunekit.allocation import specs
    from prunekit.errors import PrunekitError
    for name, sp in specs().items():
        for opt in sp.options.values():
            if opt.type in (int, float):
                assert opt.low is not None, f"{name}.{opt.name} has no lower bound"
                for bad in (float("nan"), float("inf"), float("-inf")):
                    with pytest.raises(PrunekitError):
                        sp.check_options({opt.name: bad})


@pytest.mark.parametrize("argv", [
    ["prune", "--sparsity", "0.5", "--device", "banana"],
    ["prune", "--sparsity", "0.5", "--allocation", "alphapruning", "--alpha-epsilon", "nan"],
    ["eval", "--model", "/no/such/dir/model.gguf"],
])
def test_real_entry_point_prints_one_line(argv, tmp_path):
    """Through `python -m prunekit.cli` (fresh interpreter: import-time warnings would show here)."""
    import subprocess
    r = subprocess.run([sys.executable, "-m", "prunekit.cli", *argv, "--out", str(tmp_path / "r.json")],
                       capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=300,
                       env={**os.environ, "PRUNEKIT_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("prunekit: error: "), r.stderr
    assert list(tmp_path.iterdir()) == []


def test_library_bars_respect_tqdm_disable(monkeypatch, capsys):
    """Library calls with progress=True (the notebook default) stay silent under TQDM_DISABLE=1."""
    from conftest import tiny_calib, tiny_model

    from prunekit.solvers.prune import prune_model
    monkeypatch.setenv("TQDM_DISABLE", "1")
    prune_model(tiny_model("llama"), tiny_calib().input_ids, 0.5, "wanda", progress=True)
    assert "prune[wanda]" not in capsys.readouterr().err
    monkeypatch.delenv("TQDM_DISABLE")
    from prunekit.utils import bars_disabled
    assert bars_disabled(True) is False and bars_disabled(False) is True


def test_module_entry_points_share_the_one_line_contract(capsys):
    """`guarded`: a PrunekitError is one stderr line and exit 2; any other error still raises (a bug, not input)."""
    from prunekit.errors import PrunekitError, guarded

    def bad():
        raise PrunekitError("--x 0 must be >= 1")
    assert guarded("tool", bad) == 2
    err = capsys.readouterr().err
    assert err == "tool: error: --x 0 must be >= 1\n"
    assert guarded("tool", lambda v: v, 3) == 3 and guarded("tool", lambda: None) == 0
    with pytest.raises(ZeroDivisionError):
        guarded("tool", lambda: 1 / 0)
