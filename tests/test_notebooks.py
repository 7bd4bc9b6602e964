"""Every notebook renders with profile=quick; structure rules hold (stripped, tagged parameters)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_stripped_with_parameters_cell(nb):
    cells = json.loads(nb.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert not any(c.get("outputs") or c.get("execution_count") for c in code), "outputs not stripped"
    assert "parameters" in code[0].get("metadata", {}).get("tags", []), "first code cell not tagged"
    assert "profile" in "".join(code[0]["source"])


@pytest.mark.slow  # uses the real model cache (the tiny model borrows SmolLM2's tokenizer)
@pytest.mark.skipif(not os.environ.get("PRUNEKIT_DATA_DIR"), reason="PRUNEKIT_DATA_DIR not set")
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_renders_quick(nb, tmp_path, monkeypatch):
    """CI renders every notebook with profile=quick. On the tiny random model by default (every cell
    runs, in seconds); PRUNEKIT_TEST_NOTEBOOKS=1 (`make test-notebooks`) renders on the notebook's
    own model instead (~1-15 min each on 2 CPU cores)."""
    from prunekit.reports import render
    real = os.environ.get("PRUNEKIT_TEST_NOTEBOOKS") == "1"
    if not real:  # one intra-op thread: the tiny model's matmuls are too small to share (4-12x faster)
        monkeypatch.setenv("PRUNEKIT_THREADS", "1")
    r = render(nb, tmp_path, "quick", extra=None if real else {"model": "tiny-llama"})
    assert r["ok"], f"{nb.name} failed: {r['error']} (see {tmp_path / (nb.stem + '.failed.html')})"
    assert (tmp_path / f"{nb.stem}.html").exists()
    assert (tmp_path / f"{nb.stem}.json").exists(), "notebook did not save its results table"
