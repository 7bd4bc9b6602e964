"""``prunekit demo`` checks its model and data before loading, as prune does: a missing or broken
model, a profile longer than the model's positions, a missing data file is exit 2, one line,
nothing written, no model loaded (the loaders are a tripwire)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from test_cli_bad_input import _data_dir, _run_case, _truncate, _write, model_dir, tripwire  # noqa: F401


def _copy(md: Path, ws: Path, edit=None) -> str:
    d = ws / "m"
    shutil.copytree(md, d)
    if edit is not None:
        edit(d)
    return str(d)


def _cfg(**fields):
    def edit(d):
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(fields)
        (d / "config.json").write_text(json.dumps(cfg))
    return edit


DEMO = [  # (id, setup(ws, model_dir) -> (model, env), needle)
    ("model-dir-missing", lambda ws, md: (str(ws / "nowhere"), {}), "nowhere"),
    ("model-unknown-alias", lambda ws, md: ("no-such-model", {}), "unknown model"),
    ("model-no-config", lambda ws, md: (str((ws / "empty").mkdir() or ws / "empty"), {}), "config.json"),
    ("model-truncated", lambda ws, md: (_copy(md, ws, _truncate), {}), "truncated"),
    ("model-shapes", lambda ws, md: (_copy(md, ws, _cfg(intermediate_size=100)), {}), "does not match the weights"),
    ("model-blocks", lambda ws, md: (_copy(md, ws, _cfg(num_hidden_layers=6)), {}), "declares 6 decoder blocks"),
    ("model-type", lambda ws, md: (_copy(md, ws, _cfg(model_type="banana_lm")), {}), "banana_lm"),
    ("model-positions", lambda ws, md: (_copy(md, ws, _cfg(max_position_embeddings=64)), {}), "64 positions"),
    ("gguf-bad-magic", lambda ws, md: (str(_write(ws / "x.gguf", b"NOPE" + b"\0" * 64)), {}), "bad magic"),
    ("data-dir-missing", lambda ws, md: (str(md), {"PRUNEKIT_DATA_DIR": str(ws / "nowhere")}), "does not exist"),
    ("data-calib-missing", lambda ws, md: (str(md), {"PRUNEKIT_DATA_DIR": str(
        _data_dir(ws, "c4/c4-train.00000-of-01024.first1000.jsonl", None))}), "not found"),
    ("data-eval-short", lambda ws, md: (str(md), {"PRUNEKIT_DATA_DIR": str(
        _data_dir(ws, "wikitext-2-raw/wiki.test.raw", b"= a tiny text =\n"))}), "evaluation seqlen"),
    ("cache-not-writable", lambda ws, md: (str(md), {"PRUNEKIT_CACHE": str(_write(ws / "f", b"x") / "c")}),
     "PRUNEKIT_CACHE"),
]


@pytest.mark.parametrize("cid, setup, needle", DEMO, ids=[c[0] for c in DEMO])
def test_demo_refuses_before_loading(cid, setup, needle, capsys, tmp_path, model_dir, tripwire, monkeypatch):  # noqa: F811
    ws = tmp_path / "ws"
    ws.mkdir()
    model, env = setup(ws, model_dir)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    err = _run_case(capsys, ws, ["demo", "--model", model, "--offload", "disk"])
    assert needle in err, err


def test_demo_passes_its_checks_on_a_good_model(capsys, tmp_path, model_dir, tripwire):  # noqa: F811
    """A valid model gets through every check and reaches the loader (the tripwire)."""
    from test_cli_bad_input import ModelLoaded

    from prunekit.cli import main
    with pytest.raises(ModelLoaded):
        main(["demo", "--model", str(model_dir)])
    assert os.listdir(tmp_path) == []
