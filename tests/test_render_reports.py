"""Clean, self-describing reports: no terminal residue, provenance everywhere, one results schema."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _validate(doc: dict) -> None:
    import jsonschema
    from prunekit.reporting.results import RESULTS_SCHEMA
    jsonschema.validate(doc, RESULTS_SCHEMA, format_checker=jsonschema.FormatChecker())


@pytest.mark.parametrize("payload", [
    [{"model": "m", "finding": "LPS", "verdict": "non-uniform"}, {"model": "m", "finding": "x"}],  # 20: rows
    {"models": {"m": {"verdicts": ["absorbs", "amplifies"]}}},                                   # 40: nested
    {"summary": ["a", "b"], "profile": "cpu", "rows": []},                                        # 10
])
def test_every_payload_gets_one_schema(payload, tmp_path, monkeypatch):
    from prunekit.reporting.results import save_results
    monkeypatch.setenv("PRUNEKIT_REPORT_DIR", str(tmp_path))
    monkeypatch.setenv("PRUNEKIT_NOTEBOOK_PARAMETERS", json.dumps({"profile": "quick", "model": "tiny-llama"}))
    assert save_results("nb", payload) is None  # nothing echoed as a notebook's last value
    doc = json.loads((tmp_path / "nb.json").read_text())
    _validate(doc)
    assert doc["data"] == payload and doc["provenance"]["parameters"]["model"] == "tiny-llama"
    assert doc["profile"] == "quick"
    want = {0: "non-uniform", 1: "absorbs; amplifies", 2: "a; b"}
    assert doc["summary"] in want.values()


def test_schema_rejects_a_bare_list():
    import jsonschema
    with pytest.raises(jsonschema.ValidationError):
        _validate([{"verdict": "x"}])


def test_provenance_block_is_complete():
    from prunekit.reporting.provenance import REQUIRED, provenance
    p = provenance(models=[{"id": "tiny", "fingerprint": "ab", "origin": "o", "device": "cpu", "dtype": "float32"}],
                   argv=["prunekit", "prune"])
    assert set(REQUIRED) <= set(p)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    if head:  # independent of the function: git itself
        assert p["git"]["commit"] == head and isinstance(p["git"]["dirty"], bool)
    import prunekit
    import torch
    assert p["versions"]["torch"] == torch.__version__ and p["versions"]["prunekit"] == prunekit.__version__
    assert (p["device"], p["dtype"]) == ("cpu", "float32")
    # the code digest: every tracked *.py of the package, hashed here independently of the function
    import hashlib
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "prunekit"],
                           capture_output=True, text=True).stdout.split()
    if files:
        h = hashlib.sha256()
        for rel in sorted(f for f in files if f.endswith(".py")):
            r, data = rel.removeprefix("prunekit/").encode(), (ROOT / rel).read_bytes()
            h.update(len(r).to_bytes(8, "big") + r + len(data).to_bytes(8, "big") + data)
        assert p["code"] == {"version": prunekit.__version__, "digest": h.hexdigest()}


def test_report_filter_drops_ansi_and_widget_residue():
    import nbformat
    from prunekit.reporting.render import _drop_progress_bars
    nb = nbformat.v4.new_notebook()
    c = nbformat.v4.new_code_cell("x")
    c.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="\x1b[A\x1b[A\n\x1b[A\nUserWarning: keep me\n"),
        nbformat.v4.new_output("stream", name="stderr",
                               text="TqdmWarning: IProgress not found. Please update jupyter and ipywidgets.\n"),
        nbformat.v4.new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "1"},
                                                     "text/plain": "HBox(children=(...))"}),
        nbformat.v4.new_output("stream", name="stdout", text="\x1b[1mbold\x1b[0m result\n"),
    ]
    nb.cells = [c]
    _drop_progress_bars(nb)
    assert [(o.get("name"), o.get("text")) for o in nb.cells[0].outputs] == [
        ("stderr", "UserWarning: keep me"), ("stdout", "bold result\n")]


@pytest.mark.slow  # tiny-llama borrows SmolLM2's tokenizer from the real model cache
@pytest.mark.skipif(not os.environ.get("PRUNEKIT_DATA_DIR"), reason="PRUNEKIT_DATA_DIR not set")
def test_rendered_baselines_report_is_clean_and_says_where_it_came_from(tmp_path, monkeypatch):
    from prunekit.reporting.render import render, write_index
    monkeypatch.setenv("PRUNEKIT_THREADS", "1")
    nb = ROOT / "notebooks" / "10_baselines.ipynb"
    r = render(nb, tmp_path, "quick", extra={"model": "tiny-llama"})
    assert r["ok"], r["error"]
    page = (tmp_path / "10_baselines.html").read_text()
    for bad in ("\x1b", "TqdmWarning", "Traceback", "prunekit-10_baselines-", "/tmp/"):
        assert bad not in page, f"{bad!r} in the report"
    first_heading = nb.read_text().split('"# ', 1)[1].split("\\n", 1)[0]
    assert f"<title>{first_heading}</title>" in page
    doc = json.loads((tmp_path / "10_baselines.json").read_text())
    _validate(doc)
    prov = doc["provenance"]
    assert [m["id"] for m in prov["models"]] == ["tiny-llama"] and prov["profile"] == "quick"
    assert prov["parameters"] == {"profile": "quick", "model": "tiny-llama"}
    # the page shows that same block
    assert "Provenance" in page and prov["models"][0]["fingerprint"] in page
    if prov["git"]:
        assert prov["git"]["commit"][:12] in page
    executed = json.loads((tmp_path / "10_baselines.ipynb").read_text())  # kept beside the HTML
    assert any(c.get("outputs") for c in executed["cells"])
    index = write_index(tmp_path, [r]).read_text()
    assert "tiny-llama" in index and 'href="10_baselines.ipynb"' in index and 'href="10_baselines.html"' in index
    # the index says when and from which code, and one sentence per notebook
    assert prov["created"][:16].replace("T", " ") in index
    assert (prov["git"]["commit"][:12] if prov["git"] else prov["code"]["digest"][:12]) in index
    first = doc["data"]["summary"][0]
    row = next(tr for tr in index.split("<tr>") if "10_baselines.html" in tr)
    summary_cell = row.rsplit("<td>", 1)[1]
    assert summary_cell.startswith(first) and summary_cell.count(";") == first.count(";")
    meta = executed["metadata"]["papermill"]
    assert meta["input_path"] == "10_baselines.ipynb" and meta["output_path"] == "10_baselines.ipynb"
    assert "prunekit-10_baselines-" not in json.dumps(executed)
