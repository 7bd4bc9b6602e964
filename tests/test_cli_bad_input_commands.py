"""Bad input in every command besides prune/eval flags (those are in test_cli_bad_input): sweep grids
and results files, tasks --write, the report renderer, environment variables, model preflight and
output collisions. Each case: exit 2, exactly one line on stderr, nothing written in the workspace,
no model loaded (the tripwire of test_cli_bad_input), no notebook rendered."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_cli_bad_input import EVAL, PRUNE, ModelLoaded, _model_copy, _run_case, _snapshot, model_dir, tripwire  # noqa: F401

from prunekit.cli import main

SHARED = Path(os.environ.get("PRUNEKIT_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _run(capsys, ws: Path, fn, argv):
    return _run_case(capsys, ws, argv, fn)


def _write(p: Path, data: bytes | str) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


# ----------------------------------------------------------------------------- sweep

def _grid(model: str, **over) -> dict:
    g = {"models": [model], "allocations": ["uniform"], "metrics": ["magnitude"], "sparsities": [0.5],
         "calibration": {"dataset": "c4", "samples": 2, "seqlen": 32, "batch_size": 2},
         "evaluation": {"datasets": ["wikitext2"], "seqlen": 64, "windows": 1}}
    g.update(over)
    return g


def _fifo(p: Path) -> Path:
    os.mkfifo(p)
    return p


def _symlink(p: Path) -> Path:
    os.symlink(_write(p.parent / "precious.txt", "keep me"), p)
    return p


def _cfg(**kv):
    def edit(d):
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(kv)
        (d / "config.json").write_text(json.dumps(cfg))
    return edit


def _fifo_file(name):
    def edit(d):
        (d / name).unlink()
        os.mkfifo(d / name)
    return edit


def _dir_file(name):
    def edit(d):
        (d / name).unlink()
        (d / name).mkdir()
    return edit


def _truncated_gguf(ws: Path) -> str:
    gguf = pytest.importorskip("gguf")
    import numpy as np
    p = ws / "t.gguf"
    w = gguf.GGUFWriter(str(p), "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_tensor("token_embd.weight", np.ones((64, 16), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    p.write_bytes(p.read_bytes()[:-1000])
    return str(p)


# (id, grid overrides or callable(ws, md) -> (grid dict, extra argv, out path), needle)
SWEEP = [
    ("model-missing", {"models": ["/no/such/model-dir"]}, "models"),
    ("model-unknown", {"models": ["no-such-model"]}, "unknown model"),
    ("model-hub-offline", {"models": ["nobody/no-such-model"]}, "hub"),
    ("model-second-missing", lambda ws, md: ({"models": [str(md), "/no/such/dir"]}, [], None), "/no/such/dir"),
    ("model-gguf-magic", lambda ws, md: ({"models": [str(_write(ws / "x.gguf", b"NOPE" + b"\0" * 64))]}, [], None),
     "bad magic"),
    ("model-gguf-truncated", lambda ws, md: ({"models": [_truncated_gguf(ws)]}, [], None), "truncated"),
    ("model-dir-no-config", lambda ws, md: ({"models": [str((ws / "e").mkdir() or ws / "e")]}, [], None), "config.json"),
    ("model-blocks-mismatch", lambda ws, md: ({"models": [_model_copy(md, ws, _cfg(num_hidden_layers=6))]}, [], None),
     "declares 6"),
    ("model-config-fifo", lambda ws, md: ({"models": [_model_copy(md, ws, _fifo_file("config.json"))]}, [], None),
     "not a regular file"),
    ("device-banana", {"device": "banana"}, "banana"),
    ("device-cuda", {"device": "cuda"}, "CUDA"),
    ("device-cuda7", {"device": "cuda:7"}, "cuda:7"),
    ("device-mps", {"device": "mps"}, "mps"),
    ("dtype-int8", {"dtype": "int8"}, "dtype"),
    ("dtype-number", {"dtype": 8}, "dtype"),
    ("calib-seqlen-positions", {"calibration": {"seqlen": 1000}}, "512 positions"),
    ("eval-seqlen-positions", {"evaluation": {"seqlen": 1000}}, "512 positions"),
    ("calib-too-many-windows", {"calibration": {"dataset": "wikitext2", "samples": 10 ** 7, "seqlen": 256}},
     "windows"),
    ("zero-shot-unknown", {"zero_shot": {"tasks": ["nope"]}}, "zero-shot task"),
    ("zero-shot-mixed", {"zero_shot": {"tasks": ["boolq", "nope"]}}, "'nope'"),
    ("svnup-window-blocks", {"allocations": [{"method": "svnup", "options": {"window": 5}}]}, "4 blocks"),
    ("owl-lambda", {"allocations": [{"method": "owl", "options": {"lam": 2}}]}, "lam"),
    ("method-unknown", {"allocations": ["nope"]}, "nope"),
    ("allocations-empty", {"allocations": []}, "allocations"),
    ("duplicate-label", {"allocations": ["owl", "owl"]}, "duplicate"),
    ("sparsity-1", {"sparsities": [1.0]}, "sparsity"),
    ("sparsity-text", {"sparsities": ["half"]}, "float"),
    ("metric-obs", {"metrics": ["obs"]}, "obs"),
    ("seed-neg", {"seeds": [-1]}, "seeds"),
    ("calib-samples-0", {"calibration": {"samples": 0}}, "samples"),
    ("calib-dataset", {"calibration": {"dataset": "pile"}}, "pile"),
    ("calib-unknown-key", {"calibration": {"sampels": 2}}, "sampels"),
    ("eval-windows-0", {"evaluation": {"windows": 0}}, "windows"),
    ("eval-dataset", {"evaluation": {"datasets": ["wikitext3"]}}, "wikitext3"),
    ("unknown-key", {"modles": ["x"]}, "modles"),
    ("groups-keys", {"groups": [{"sparsity": 0.5}], "metrics": None, "sparsities": None}, "groups"),
    ("out-notes", lambda ws, md: ({}, [], str(_write(ws / "notes.txt", "my notes\nline two"))), "not a prunekit"),
    ("out-notes-one-line", lambda ws, md: ({}, [], str(_write(ws / "n.txt", "line two"))), "not a prunekit"),
    ("out-json-not-record", lambda ws, md: ({}, [], str(_write(ws / "r.jsonl", '{"a": 1}\n'))), "not a prunekit"),
    ("out-symlink", lambda ws, md: ({}, [], str(_symlink(ws / "link.jsonl"))), "symlink"),
    ("out-fifo", lambda ws, md: ({}, [], str(_fifo(ws / "pipe"))), "not a regular file"),
    ("out-dir", lambda ws, md: ({}, [], str(ws)), "directory"),
    ("out-missing-parent", lambda ws, md: ({}, [], str(ws / "nope" / "r.jsonl")), "does not exist"),
    ("out-empty", lambda ws, md: ({}, [], ""), "--out needs a path"),
    ("retries-neg", lambda ws, md: ({}, ["--retries", "-1"], None), "--retries"),
    ("task-cpus-0", lambda ws, md: ({}, ["--task-cpus", "0"], None), "--task-cpus"),
    ("num-cpus-0", lambda ws, md: ({}, ["--num-cpus", "0"], None), "--num-cpus"),
    ("ray-address-syntax", lambda ws, md: ({}, ["--ray-address", "nohost"], None), "HOST:PORT"),
    ("ray-address-port", lambda ws, md: ({}, ["--ray-address", "127.0.0.1:99999"], None), "HOST:PORT"),
    ("ray-address-closed", lambda ws, md: ({}, ["--ray-address", "127.0.0.1:1"], None), "no Ray head"),
    ("grid-missing", lambda ws, md: (None, [], None), "not found"),
    ("grid-yaml", lambda ws, md: ("models: [a\n", [], None), "not valid YAML"),
    ("grid-not-mapping", lambda ws, md: ("- a\n- b\n", [], None), "mapping"),
]


def _sweep_case(ws, md, spec):
    out = None
    extra = []
    if callable(spec):
        spec, extra, out = spec(ws, md)
    grid_path = ws / "g.yaml"
    if spec is None:
        grid_path = ws / "missing.yaml"
    elif isinstance(spec, str):
        grid_path.write_text(spec)
    else:
        g = _grid(str(md))
        for k, v in spec.items():
            if v is None:
                g.pop(k, None)
            elif isinstance(v, dict) and isinstance(g.get(k), dict):
                g[k] = {**g[k], **v}
            else:
                g[k] = v
        import yaml
        grid_path.write_text(yaml.safe_dump(g))
    out = str(ws / "res.jsonl") if out is None else out
    return ["sweep", str(grid_path), "--out", out, "--quiet", *extra]


@pytest.mark.parametrize("cid, spec, needle", SWEEP, ids=[c[0] for c in SWEEP])
def test_sweep_bad_input(cid, spec, needle, capsys, tmp_path, model_dir, tripwire):  # noqa: F811
    ws = tmp_path / "ws"
    ws.mkdir()
    argv = _sweep_case(ws, model_dir, spec)
    err = _run(capsys, ws, main, argv)
    assert needle in err, err


# ----------------------------------------------------------------------------- tasks --write

def _planted(kind):
    def setup(ws):
        d = ws / "tasks"
        d.mkdir()
        f = d / "prunekit_boolq.yaml"
        if kind == "symlink":
            os.symlink(_write(ws / "precious.txt", "keep me"), f)
        elif kind == "fifo":
            os.mkfifo(f)
        elif kind == "dir":
            f.mkdir()
        elif kind == "foreign":
            f.write_text("my own lm-eval task\n")
        return ["--write", str(d), "--tasks", "rte,boolq"]
    return setup


TASKS = [
    ("write-file", lambda ws: ["--write", str(_write(ws / "f", "x"))], "not a directory"),
    ("write-symlink-dir", lambda ws: ["--write", str(os.symlink(ws, ws / "dl") or ws / "dl")], "symlink"),
    ("write-missing-parent", lambda ws: ["--write", str(ws / "a" / "b")], "does not exist"),
    ("write-under-file", lambda ws: ["--write", str(_write(ws / "f", "x") / "d")], "does not exist"),
    ("write-empty", lambda ws: ["--write", ""], "--write"),
    ("planted-symlink", _planted("symlink"), "not a regular file"),
    ("planted-fifo", _planted("fifo"), "not a regular file"),
    ("planted-dir", _planted("dir"), "not a regular file"),
    ("planted-foreign", _planted("foreign"), "not written by prunekit"),
    ("task-unknown", lambda ws: ["--write", str(ws / "t"), "--tasks", "nope"], "unknown task"),
    ("task-mixed", lambda ws: ["--write", str(ws / "t"), "--tasks", "boolq,nope"], "'nope'"),
    ("model-comma", lambda ws: ["--write", str(ws / "t"), "--model", "x,trust_remote_code=True"], "--model"),
    ("model-newline", lambda ws: ["--write", str(ws / "t"), "--model", "x\ny"], "--model"),
    ("data-missing", lambda ws: ["--write", str(ws / "t"), "--tasks", "boolq", "ENV=" + str(ws / "nowhere")],
     "boolq"),
]


@pytest.mark.parametrize("cid, setup, needle", TASKS, ids=[c[0] for c in TASKS])
def test_tasks_bad_input(cid, setup, needle, capsys, tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    ws.mkdir()
    argv = setup(ws)
    for a in [a for a in argv if a.startswith("ENV=")]:
        monkeypatch.setenv("PRUNEKIT_DATA_DIR", a[4:])
        argv.remove(a)
    err = _run(capsys, ws, main, ["tasks", *argv])
    assert needle in err, err


# ----------------------------------------------------------------------------- report renderer

def _no_render(monkeypatch):
    import prunekit.reporting.render as R

    def boom(*a, **k):
        raise ModelLoaded("a notebook was rendered")
    monkeypatch.setattr(R, "render", boom)
    monkeypatch.setattr(R, "render_ray", boom)


REPORT = [
    ("param-type-number", lambda ws: ["-p", "sparsity=abc"], "expects a number"),
    ("param-type-list", lambda ws: ["-p", "metrics=wanda"], "expects a list"),
    ("param-unknown", lambda ws: ["-p", "sparsty=0.5"], "no parameter"),
    ("param-syntax", lambda ws: ["-p", "sparsity"], "NAME=VALUE"),
    ("param-yaml", lambda ws: ["-p", "sparsity=[0.5"], "YAML"),
    ("out-file", lambda ws: ["--out", str(_write(ws / "f", "x"))], "not a directory"),
    ("out-under-file", lambda ws: ["--out", str(_write(ws / "f", "x") / "r")], "not a directory"),
    ("out-planted-symlink", lambda ws: ["--out", str(ws / "r")] if _symlink_in(ws / "r", "00_quickstart.html")
     else [], "not a regular file"),
    ("out-planted-fifo", lambda ws: ["--out", str(ws / "r")] if _fifo_in(ws / "r", "index.html") else [],
     "not a regular file"),
    ("notebooks-missing", lambda ws: ["--notebooks", str(ws / "none")], "not a directory"),
    ("only-nothing", lambda ws: ["--only", "99"], "no NN_"),
    ("profile", lambda ws: ["--profile", "huge"], "invalid choice"),
]


def _symlink_in(d: Path, name: str) -> bool:
    d.mkdir()
    os.symlink(_write(d.parent / "precious.html", "keep"), d / name)
    return True


def _fifo_in(d: Path, name: str) -> bool:
    d.mkdir()
    os.mkfifo(d / name)
    return True


@pytest.mark.parametrize("cid, setup, needle", REPORT, ids=[c[0] for c in REPORT])
def test_reporting_bad_input(cid, setup, needle, capsys, tmp_path, monkeypatch):
    from prunekit.reporting.render import main as report_main
    ws = tmp_path / "ws"
    ws.mkdir()
    _no_render(monkeypatch)
    argv = ["--notebooks", str(NOTEBOOKS), "--only", "00", "--out", str(ws / "reports"), *setup(ws)]

    def call(argv):
        try:
            return report_main(argv)
        except SystemExit as e:  # argparse
            return e.code
    err = _run(capsys, ws, call, argv)
    assert needle in err, err


# ----------------------------------------------------------------------------- environment, every command

COMMANDS = {
    "version": ["--version"],
    "methods": ["methods"],
    "tasks": ["tasks"],
    "prune": PRUNE,
    "eval": EVAL,
    "sweep": ["sweep", "{grid}", "--out", "{ws}/r.jsonl"],
    "demo": ["demo", "--model", "tiny-llama"],
}
ENVS = [("PRUNEKIT_THREADS", "abc"), ("PRUNEKIT_THREADS", "0"), ("PRUNEKIT_THREADS", "-3"),
        ("PRUNEKIT_THREADS", "1.5"), ("PRUNEKIT_PROGRESS", "maybe"), ("PRUNEKIT_DEBUG", "sometimes"),
        ("PRUNEKIT_CACHE", ""), ("PRUNEKIT_DATA_DIR", " ")]


@pytest.mark.parametrize("cmd", list(COMMANDS))
@pytest.mark.parametrize("var, value", ENVS, ids=[f"{k}={v!r}" for k, v in ENVS])
def test_environment_every_command(cmd, var, value, capsys, tmp_path, model_dir, tripwire, monkeypatch):  # noqa: F811
    ws = tmp_path / "ws"
    ws.mkdir()
    g = tmp_path / "g.yaml"
    import yaml
    g.write_text(yaml.safe_dump(_grid(str(model_dir))))
    monkeypatch.setenv(var, value)
    argv = [a.replace("{model}", str(model_dir)).replace("{grid}", str(g)).replace("{ws}", str(ws))
            for a in COMMANDS[cmd]]
    err = _run(capsys, ws, main, argv)
    assert var in err, err


# ----------------------------------------------------------------------------- preflight and outputs (prune)

PREFLIGHT = [
    ("blocks-more-than-weights", lambda ws, md: {"model": _model_copy(md, ws, _cfg(num_hidden_layers=6))},
     "declares 6 decoder blocks but the weights hold 4"),
    ("blocks-fewer-than-weights", lambda ws, md: {"model": _model_copy(md, ws, _cfg(num_hidden_layers=2))},
     "declares 2"),
    ("blocks-zero", lambda ws, md: {"model": _model_copy(md, ws, _cfg(num_hidden_layers=0))}, "num_hidden_layers"),
    ("blocks-text", lambda ws, md: {"model": _model_copy(md, ws, _cfg(num_hidden_layers="4"))}, "num_hidden_layers"),
    ("config-fifo", lambda ws, md: {"model": _model_copy(md, ws, _fifo_file("config.json"))}, "not a regular file"),
    ("weights-fifo", lambda ws, md: {"model": _model_copy(md, ws, _fifo_file("model.safetensors"))},
     "not a regular file"),
    ("config-dir", lambda ws, md: {"model": _model_copy(md, ws, _dir_file("config.json"))}, "config.json"),
    ("weights-dir", lambda ws, md: {"model": _model_copy(md, ws, _dir_file("model.safetensors"))},
     "not a regular file"),
    ("gguf-truncated", lambda ws, md: {"model": _truncated_gguf(ws)}, "truncated"),
    ("calib-windows", lambda ws, md: {"argv": ["--calib-dataset", "ptb", "--calib-samples", "1000000",
                                               "--calib-seqlen", "256"]}, "windows"),
    ("save-equals-recipe", lambda ws, md: {"argv": ["--metric", "wanda", "--export-recipe", str(ws / "x")],
                                           "save": str(ws / "x")}, "same path"),
    ("out-equals-recipe", lambda ws, md: {"argv": ["--metric", "wanda", "--export-recipe", str(ws / "r.json")]},
     "same path"),
    ("out-inside-save", lambda ws, md: {"save": str((ws / "sv").mkdir() or ws / "sv"), "out": str(ws / "sv" / "r.json")},
     "inside --save-model"),
    ("recipe-inside-save", lambda ws, md: {"save": str((ws / "sv").mkdir() or ws / "sv"),
                                           "argv": ["--metric", "wanda", "--export-recipe", str(ws / "sv" / "r.yaml")]},
     "inside --save-model"),
    ("out-foreign", lambda ws, md: {"out": str(_write(ws / "notes.txt", "my notes\nline two"))}, "not written by"),
    ("out-foreign-json", lambda ws, md: {"out": str(_write(ws / "cfg.json", '{"a": 1}'))}, "not written by"),
    ("recipe-foreign", lambda ws, md: {"argv": ["--metric", "wanda", "--export-recipe",
                                                str(_write(ws / "mine.yaml", "a: 1\n"))]}, "not written by"),
]


@pytest.mark.parametrize("cid, setup, needle", PREFLIGHT, ids=[c[0] for c in PREFLIGHT])
def test_prune_preflight_and_outputs(cid, setup, needle, capsys, tmp_path, model_dir, tripwire):  # noqa: F811
    ws = tmp_path / "ws"
    ws.mkdir()
    sub = setup(ws, model_dir)
    argv = [a.replace("{model}", sub.get("model", str(model_dir))) for a in PRUNE] + sub.get("argv", [])
    argv += ["--out", sub.get("out", str(ws / "r.json")), "--save-model", sub.get("save", str(ws / "saved"))]
    err = _run(capsys, ws, main, argv)
    assert needle in err, err


def test_case_count():
    """This file and test_cli_bad_input together: at least 200 bad-input cases."""
    from test_cli_bad_input import CASES, EVAL_CASES, PATH_CASES
    here = len(SWEEP) + len(TASKS) + len(REPORT) + len(COMMANDS) * len(ENVS) + len(PREFLIGHT)
    assert here + len(CASES) + len(PATH_CASES) + len(EVAL_CASES) >= 200, here
