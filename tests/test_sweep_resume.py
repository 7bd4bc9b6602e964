"""A sweep never reuses a record of another code version.

``run_grid`` skips a cell only when the results file holds a record of that cell made by the same
code version (``runners.code_version``: package versions + the package's source digest). A tiny
grid is run; then, under a different code version, every cell must be recomputed (and appended,
the old records left in place); under the same version nothing is; back under the first version its
own records are found again."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import saved_tiny_llama


pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not os.environ.get("PRUNEKIT_DATA_DIR"), reason="PRUNEKIT_DATA_DIR not set")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return saved_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama-dir", hidden_size=32,
                            intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                            max_position_embeddings=128)


def tiny_grid(model_dir):
    return {"name": "cv", "models": [model_dir], "allocations": ["uniform", "owl"], "metrics": ["magnitude"],
            "sparsities": [0.5], "seeds": [0],
            "calibration": {"dataset": "c4", "samples": 2, "seqlen": 16, "batch_size": 2},
            "evaluation": {"datasets": ["wikitext2"], "seqlen": 32, "windows": 1}}


def records(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def test_records_of_another_code_version_are_never_reused(model_dir, tmp_path, monkeypatch):
    from prunekit.experiments.sweep import runners, store
    from prunekit.experiments.sweep.runners import run_grid
    g, out = tiny_grid(model_dir), tmp_path / "r.jsonl"
    v1 = runners.code_version()
    first = run_grid(g, out, progress=False)
    n = len(first)
    assert n == 2 and first.attrs["ran"] == n and (first.status == "ok").all()
    assert [r["code_version"] for r in records(out)] == [v1] * n

    same = run_grid(g, out, progress=False)  # same version: nothing recomputed
    assert same.attrs["ran"] == 0 and same.attrs["skipped"] == n and same.attrs["model_loads"] == 0

    v2 = {**v1, "source": "another-version"}
    for mod in (runners, store):  # run_grid reads runners.code_version; patch the store's too
        monkeypatch.setattr(mod, "code_version", lambda: dict(v2))
    other = run_grid(g, out, progress=False)
    assert other.attrs["ran"] == n and other.attrs["skipped"] == 0, "a record of another code version was reused"
    assert sorted(r["cell"] for r in other.attrs["records"]) == sorted(r["cell"] for r in first.attrs["records"])
    assert all(r["code_version"] == v2 for r in other.attrs["records"])
    recs = records(out)
    assert [r["code_version"] for r in recs] == [v1] * n + [v2] * n  # appended; the old ones kept

    again = run_grid(g, out, progress=False)
    assert again.attrs["ran"] == 0 and again.attrs["skipped"] == n
    monkeypatch.undo()
    back = run_grid(g, out, progress=False)  # the first version finds its own records again
    assert back.attrs["ran"] == 0 and back.attrs["skipped"] == n
    assert all(r["code_version"] == v1 for r in back.attrs["records"])
