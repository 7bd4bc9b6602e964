"""Notebook rendering (prunekit/reporting/render.py): every notebook renders with profile=quick; the
committed notebooks are stripped (nbstripout) and start with a tagged parameters cell."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import needs_data

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_stripped_with_parameters_cell(nb):
    cells = json.loads(nb.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert not any(c.get("outputs") or c.get("execution_count") for c in code), "outputs not stripped"
    assert "parameters" in code[0].get("metadata", {}).get("tags", []), "first code cell not tagged"
    assert "profile" in "".join(code[0]["source"])


def test_committed_notebooks_are_what_nbstripout_writes(tmp_path):
    """`make strip-notebooks` (nbstripout with the Makefile's flags) leaves every committed notebook
    byte for byte unchanged, papermill metadata included."""
    import re
    import subprocess
    import sys
    make = (NOTEBOOKS[0].parents[1] / "Makefile").read_text()
    keys = re.search(r"^NBSTRIPOUT_KEYS := (.*)$", make, re.M).group(1)
    for nb in NOTEBOOKS:
        (tmp_path / nb.name).write_bytes(nb.read_bytes())
    subprocess.run([sys.executable, "-m", "nbstripout", "--keep-id", "--extra-keys", keys,
                    *(str(tmp_path / nb.name) for nb in NOTEBOOKS)], check=True, cwd=tmp_path)
    changed = [nb.name for nb in NOTEBOOKS if (tmp_path / nb.name).read_bytes() != nb.read_bytes()]
    assert not changed, f"not stripped: {changed}; run `make strip-notebooks`"


@pytest.mark.slow  # uses the real model cache (the tiny model borrows SmolLM2's tokenizer)
@needs_data
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_renders_quick(nb, tmp_path, monkeypatch):
    """CI renders every notebook with profile=quick. On the tiny random model by default (every cell
    runs, in seconds); PRUNEKIT_TEST_NOTEBOOKS=1 (`make test-notebooks`) renders on the notebook's
    own model instead (~1-15 min each on 2 CPU cores)."""
    from prunekit.reporting.render import render
    real = os.environ.get("PRUNEKIT_TEST_NOTEBOOKS") == "1"
    if not real:  # one intra-op thread: the tiny model's matmuls are too small to share (4-12x faster)
        monkeypatch.setenv("PRUNEKIT_THREADS", "1")
    r = render(nb, tmp_path, "quick", extra=None if real else {"model": "tiny-llama"})
    assert r["ok"], f"{nb.name} failed: {r['error']} (see {tmp_path / (nb.stem + '.failed.html')})"
    assert (tmp_path / f"{nb.stem}.html").exists()
    assert (tmp_path / f"{nb.stem}.json").exists(), "notebook did not save its results table"
    import jsonschema
    from prunekit.reporting.results import RESULTS_SCHEMA
    doc = json.loads((tmp_path / f"{nb.stem}.json").read_text())
    jsonschema.validate(doc, RESULTS_SCHEMA)  # one schema for every notebook
    assert doc["provenance"]["models"], "no model in the provenance"
    assert (tmp_path / f"{nb.stem}.ipynb").exists(), "executed notebook not kept beside the HTML"
    executed = json.loads((tmp_path / f"{nb.stem}.ipynb").read_text())
    assert executed["metadata"]["papermill"]["input_path"] == nb.name
    assert str(tmp_path) not in json.dumps(executed["metadata"]) and "prunekit-" + nb.stem not in json.dumps(executed)
    page = (tmp_path / f"{nb.stem}.html").read_text()
    if nb.stem in ("10_baselines", "50_comparison"):  # a perplexity-vs-sparsity figure per model
        cell = next(c for c in executed["cells"] if "comparison_lines(" in "".join(c["source"]))
        n_models = len(doc["data"].get("models") or [1])
        assert sum("image/png" in o.get("data", {}) for o in cell["outputs"]) >= n_models
    if nb.stem == "50_comparison":  # every claim in full, and no table of NaN
        from prunekit.experiments.comparison import CLAIMS
        import html as _html
        import re
        cells = {_html.unescape(c).strip() for c in re.findall(r"<td>(.*?)</td>", page, re.S)}  # table cells
        assert all(c.text in cells for c in CLAIMS), [c.text for c in CLAIMS if c.text not in cells]
        assert ">NaN<" not in page and "None</td>" not in page


def test_report_html_drops_progress_bars_keeps_warnings():
    import nbformat

    from prunekit.reporting.render import _drop_progress_bars
    nb = nbformat.v4.new_notebook()
    bars = "prune[wanda]:  50%|█████     | 15/30 [00:19<00:19,  1.3s/it]\rprune[wanda]: 100%|██████████| 30/30 [00:39<00:00,  1.41s/it]\n"
    warn = "UserWarning: offline WikiText-2 calibration uses the test split\n"
    c = nbformat.v4.new_code_cell("x")
    c.outputs = [nbformat.v4.new_output("stream", name="stderr", text=bars),
                 nbformat.v4.new_output("stream", name="stderr", text=bars + warn + "ppl: 12.0 tok/s]\n"),
                 nbformat.v4.new_output("stream", name="stdout", text="dense perplexity 28.4\n")]
    nb.cells = [c]
    _drop_progress_bars(nb)
    texts = [(o["name"], o["text"]) for o in nb.cells[0].outputs]
    assert texts == [("stderr", warn.strip()), ("stdout", "dense perplexity 28.4\n")]


def _toy_notebook(path: Path, body: str) -> None:
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    params = nbformat.v4.new_code_cell('profile = "quick"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {path.stem} title"), params, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


def test_reports_failure_keeps_previous_good_report_and_exits_nonzero(tmp_path):
    from prunekit.reporting.render import main
    nbs, out = tmp_path / "nbs", tmp_path / "out"
    nbs.mkdir()
    save = "from prunekit.reporting.results import save_results\nsave_results('{n}', {{'summary': 'fine {n}'}})"
    _toy_notebook(nbs / "01_good.ipynb", save.format(n="01_good"))
    _toy_notebook(nbs / "02_flaky.ipynb", save.format(n="02_flaky"))
    assert main(["--notebooks", str(nbs), "--out", str(out)]) == 0
    good_html = (out / "02_flaky.html").read_text()
    assert json.loads((out / "02_flaky.json").read_text())["summary"] == "fine 02_flaky"
    _toy_notebook(nbs / "02_flaky.ipynb", "raise RuntimeError('boom in cell')")
    assert main(["--notebooks", str(nbs), "--out", str(out)]) == 1
    assert (out / "02_flaky.html").read_text() == good_html  # the previous good report survives
    assert "boom in cell" in (out / "02_flaky.failed.html").read_text()  # the error is visible
    index = (out / "index.html").read_text()
    assert "FAILED" in index and "02_flaky.failed.html" in index and "fine 01_good" in index


def test_param_flag_parses_yaml_and_rejects_names_the_notebook_lacks(capsys):
    """`-p NAME=VALUE` reaches papermill as typed YAML values; a name missing from a selected notebook's
    parameters cell (papermill would only warn) or a malformed pair is one line, exit 2, nothing rendered."""
    import papermill as pm

    from prunekit.reporting.render import main, parse_params
    nb = Path(__file__).resolve().parents[1] / "notebooks" / "50_comparison.ipynb"
    got = parse_params(["results=runs/x.jsonl", "seeds=[0, 1]", "eval_windows=4", "grid=null"], [nb])
    assert got == {"results": "runs/x.jsonl", "seeds": [0, 1], "eval_windows": 4, "grid": None}
    assert set(got) <= set(pm.inspect_notebook(str(nb)))
    for bad, needle in (("seedz=[0]", "has no parameter 'seedz'"), ("seeds", "expects NAME=VALUE"),
                        ("seeds=[0", "not a YAML value")):
        assert main(["--only", "50", "-p", bad, "--out", "/nonexistent/never"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err


def test_make_lab_saves_results_under_the_ignored_top_level_reports():
    """`make lab` runs the notebooks in notebooks/ but their results go to <repo>/reports/, which git
    ignores (read from make's dry run and `git check-ignore`, not from the Makefile text)."""
    import subprocess
    root = NOTEBOOKS[0].parents[1]
    venv = root / ".no-such-venv"
    dry = subprocess.run(["make", "-n", "-C", str(root), "lab", f"VENV={venv}", "-o", f"{venv}/.prunekit-installed"],
                         capture_output=True, text=True, check=True).stdout
    lab = next(ln for ln in dry.splitlines() if "jupyter lab" in ln)
    assert f"PRUNEKIT_REPORT_DIR={root / 'reports'} " in lab and lab.startswith("cd notebooks")
    probe = "reports/00_quickstart.json"
    assert subprocess.run(["git", "-C", str(root), "check-ignore", "-q", probe]).returncode == 0
