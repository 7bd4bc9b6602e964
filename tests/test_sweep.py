"""Grid sweeps (experiments/sweep.py): the grid file is validated up front; the in-process runner
gives Session.sweep's numbers; a killed or failing sweep resumes without recomputing finished cells
and ends equal to an uninterrupted run; a local Ray cluster gives the same records; the default
path never imports Ray."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import saved_tiny_llama

from prunekit.errors import PrunekitError

pytestmark = pytest.mark.usefixtures("one_thread")
needs_data = pytest.mark.skipif(not os.environ.get("PRUNEKIT_DATA_DIR"), reason="PRUNEKIT_DATA_DIR not set")
ROOT = Path(__file__).resolve().parents[1]




@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny-llama-sized random LLaMA saved as a HF directory, loadable by name in any process."""
    return saved_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama-dir", hidden_size=64,
                            intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=512)


def grid(model_dir, **over):
    g = {"name": "t", "models": [model_dir], "allocations": ["uniform", {"method": "owl", "options": {"lam": 0.1}}],
         "metrics": ["magnitude", "wanda"], "sparsities": [0.6], "seeds": [0, 1],
         "calibration": {"dataset": "c4", "samples": 4, "seqlen": 32, "batch_size": 4},
         "evaluation": {"datasets": ["wikitext2"], "seqlen": 64, "windows": 2}}
    g.update(over)
    return g


def by_cell(records):
    from prunekit.experiments.sweep import comparable
    return [comparable(r) for r in sorted(records, key=lambda r: r["cell"])]


def lines(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


# ----------------------------------------------------------------------------- the grid file

@pytest.mark.parametrize("over, needle", [
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"allocations": ["nope"]}, "allocations[0]: unknown allocation 'nope'"),
    ({"allocations": [{"method": "owl", "options": {"lam": 9}}]}, "owl option 'lam' must be <="),
    ({"allocations": [{"method": "owl", "options": {"bogus": 1}}]}, "owl has no option 'bogus'"),
    ({"allocations": [{"method": "absorption", "options": {"base": "nope"}}]}, "unknown allocation 'nope'"),
    ({"allocations": ["owl", {"method": "owl"}]}, "duplicate label 'owl'"),
    ({"method_options": {"owl": {"lam": -1}}}, "owl option 'lam' must be >="),
    ({"sparsities": [0.5, 1.0]}, "sparsity 1.0 is outside [0, 1)"),
    ({"metrics": ["obs"]}, "unknown 'obs'"),
    ({"seeds": [0, -1]}, "expected an integer >= 0"),
    ({"seeds": [0, 0]}, "duplicate values"),
    ({"calibration": {"samples": 0}}, "calibration.samples: expected an integer >= 1"),
    ({"calibration": {"dataset": "pile"}}, "unknown 'pile'"),
    ({"evaluation": {"windowz": 2}}, "unknown key 'windowz'"),
    ({"models": []}, "models: expected a non-empty list"),
])
def test_bad_grid_is_one_line_error(over, needle):
    from prunekit.experiments.sweep import parse_grid
    with pytest.raises(PrunekitError) as e:
        parse_grid(grid("m", **over))
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_packaged_grids_are_the_comparison_profiles():
    """Each shipped grid equals the profile table's workload, and has the notebook's cell count."""
    from prunekit.experiments import comparison
    from prunekit.experiments.profiles import COMPARISON, COMPARISON_METHOD_OPTIONS
    from prunekit.experiments.comparison import comparison_grid
    from prunekit.experiments.sweep import GRID_DIR, load_grid, parse_grid
    for prof, cfg in COMPARISON.items():
        path = GRID_DIR / f"comparison-{prof}.yaml"
        assert yaml.safe_load(path.read_text()) == comparison_grid(prof)
        g = load_grid(path)
        assert g == parse_grid(comparison_grid(prof))
        assert g.seeds == cfg["seeds"]
        assert g.groups == [(grp["sparsity"], grp["metric"], grp["allocations"]) for grp in cfg["groups"]]
        assert g.evaluation == {"datasets": cfg["eval_datasets"], "seqlen": cfg["eval_seqlen"],
                                "windows": cfg["eval_windows"]}
        labels = [label for label, _, _ in comparison.configurations()]
        assert set(g.allocations) <= set(labels)
        for m, opts in COMPARISON_METHOD_OPTIONS[prof].items():
            if m in g.allocations:
                assert all(g.allocations[m][1][k] == v for k, v in opts.items())
        # the designed runs: every group's allocations for every seed, nothing else
        assert g.models == cfg["models"]  # both families where the profile runs both
        assert len(g.cells()) == len(cfg["models"]) * len(cfg["seeds"]) * sum(len(grp["allocations"])
                                                                             for grp in cfg["groups"])
        assert {(c["sparsity"], c["metric"], c["allocation"]) for c in g.cells()} == {
            (grp["sparsity"], grp["metric"], lab) for grp in cfg["groups"] for lab in grp["allocations"]}


# ----------------------------------------------------------------------------- in-process runs

@needs_data
def test_in_process_grid_equals_session_sweep_and_loads_once(model_dir, tmp_path):
    from prunekit.experiments.session import Session
    from prunekit.experiments.sweep import run_grid
    out = tmp_path / "r.jsonl"
    df = run_grid(grid(model_dir), out, progress=False)
    assert df.attrs["model_loads"] == 1 and len(df) == 8 and (df.status == "ok").all()
    assert len(lines(out)) == 8
    S = Session(model_name=model_dir, calib_samples=4, calib_seqlen=32, batch_size=4, eval_seqlen=64,
                eval_windows=2, progress=False)
    ref = S.sweep({"uniform": ("uniform", {}), "owl": ("owl", {"lam": 0.1})}, ["magnitude", "wanda"], [0.6],
                  seeds=[0, 1])
    cols = ["seed", "allocation", "metric", "sparsity", "global_sparsity", "ppl_wikitext2"]
    assert df[cols].to_dict("records") == ref[cols].to_dict("records")


@needs_data
def test_killed_then_failing_sweep_resumes_without_recomputing(model_dir, tmp_path, monkeypatch):
    from prunekit.cli import main
    from prunekit.experiments.session import Session
    from prunekit.experiments.sweep import run_grid
    g = grid(model_dir)
    ref = run_grid(g, tmp_path / "ref.jsonl", progress=False).attrs["records"]  # uninterrupted
    real = Session.run
    calls = []

    def counted(kill_at=None, fail_cell=None):
        def run(self, allocation, metric, sparsity, *a, **kw):
            calls.append((self.seed, allocation, metric))
            if len(calls) == kill_at:
                raise KeyboardInterrupt  # the driver is killed mid-sweep
            if (self.seed, allocation, metric) == fail_cell:
                raise RuntimeError("injected failure")
            return real(self, allocation, metric, sparsity, *a, **kw)
        return run

    out = tmp_path / "r.jsonl"
    monkeypatch.setattr(Session, "run", counted(kill_at=4))
    with pytest.raises(KeyboardInterrupt):
        run_grid(g, out, progress=False)
    assert len(lines(out)) == 3
    with open(out, "ab") as f:
        f.write(b'{"cell": "torn')  # a line torn by the kill
    # re-run: the 3 finished cells are skipped, one other cell fails and the rest go on
    calls.clear()
    monkeypatch.setattr(Session, "run", counted(fail_cell=(1, "owl", "wanda")))
    df = run_grid(g, out, progress=False)
    assert len(calls) == 8 - 3 and df.attrs["skipped"] == 3 and df.attrs["ran"] == 5
    assert len(df.attrs["failed"]) == 1 and df.status.tolist().count("error") == 1
    assert "RuntimeError: injected failure" in df[df.status == "error"].error.iloc[0]
    # without --retries a recorded failure counts as done; with it only that cell runs again
    calls.clear()
    monkeypatch.setattr(Session, "run", counted())
    assert main(["sweep", str(_write(tmp_path, g)), "--out", str(out), "--quiet"]) == 2 and calls == []
    assert main(["sweep", str(_write(tmp_path, g)), "--out", str(out), "--quiet", "--retries", "1"]) == 0
    assert calls == [(1, "owl", "wanda")]
    recs = lines(out)
    assert len(recs) == 3 + 5 + 1  # no torn line left, nothing duplicated except the retried cell
    final = run_grid(g, out, progress=False)
    assert final.attrs["ran"] == 0 and by_cell(final.attrs["records"]) == by_cell(ref)


def _write(tmp_path, g):
    p = tmp_path / "grid.yaml"
    p.write_text(yaml.safe_dump(g))
    return p


def test_cli_sweep_bad_grid_is_one_line(capsys, tmp_path):
    from prunekit.cli import main
    p = tmp_path / "g.yaml"
    p.write_text("models: [m]\nallocations: [uniform]\nsparsity: [0.5]\n")
    assert main(["sweep", str(p), "--out", str(tmp_path / "r.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown key 'sparsity'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r.jsonl").exists()


@needs_data
def test_default_path_never_imports_ray(model_dir, tmp_path):
    code = (f"import sys, prunekit, prunekit.cli\nfrom prunekit.experiments.sweep import run_grid\n"
            f"df = run_grid({grid(model_dir, seeds=[0], metrics=['magnitude'])!r}, {str(tmp_path / 'r.jsonl')!r},"
            f" progress=False)\nassert (df.status == 'ok').all()\nprint('ray' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PRUNEKIT_THREADS": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "False"


# ----------------------------------------------------------------------------- Ray

@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One local Ray cluster (num_cpus=2, one torch thread per worker) for this module."""
    ray = pytest.importorskip("ray")
    from prunekit.experiments.sweep import ray_init
    env = {k: os.environ.get(k) for k in ("PRUNEKIT_THREADS", "PRUNEKIT_CACHE")}
    os.environ["PRUNEKIT_THREADS"] = "1"
    os.environ["PRUNEKIT_CACHE"] = str(tmp_path_factory.mktemp("ray-cache"))
    try:
        ray_init(num_cpus=2)
    finally:
        for k, v in env.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    yield ray
    ray.shutdown()


@needs_data
def test_ray_records_equal_in_process(model_dir, tmp_path, local_ray):
    from prunekit.experiments.sweep import run_grid
    g = grid(model_dir)
    serial = run_grid(g, tmp_path / "serial.jsonl", progress=False)
    # one retry: on this shared machine Ray's memory monitor may kill a worker (recorded as an error)
    dist = run_grid(g, tmp_path / "ray.jsonl", ray=True, retries=1, progress=False)
    assert (dist.status == "ok").all() and len(dist) == 8, dist.error.dropna().unique()
    if all(r["attempt"] == 1 for r in dist.attrs["records"]):
        assert dist.attrs["model_loads"] == 2  # one per (model, seed) task
    final = [r for r in lines(tmp_path / "ray.jsonl") if r["status"] == "ok"]
    assert by_cell(final) == by_cell(lines(tmp_path / "serial.jsonl"))
    assert by_cell(dist.attrs["records"]) == by_cell(serial.attrs["records"])
    for a, b in zip(sorted(dist.attrs["records"], key=lambda r: r["cell"]),
                    sorted(serial.attrs["records"], key=lambda r: r["cell"])):
        assert math.isfinite(a["perplexity"]["wikitext2"]) and a["perplexity"] == b["perplexity"]


def test_reports_render_as_ray_tasks_with_failure_handling(tmp_path, local_ray):
    """`python -m prunekit.reporting --ray`: notebooks render in parallel; a failing one gets its
    .failed.html and a failed row while the other renders."""
    pytest.importorskip("papermill")
    import nbformat

    from prunekit.reporting.render import notebooks, render_ray, write_index
    for name, code in [("01_ok", "print('rendered', profile)"), ("02_bad", "raise ValueError('broken notebook')")]:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# {name}"),
                                             nbformat.v4.new_code_cell("profile = 'x'", metadata={"tags": ["parameters"]}),
                                             nbformat.v4.new_code_cell(code)])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, tmp_path / f"{name}.ipynb")
    out = tmp_path / "reports"
    runs = render_ray(notebooks(tmp_path), out, "quick", timeout=300, log=lambda s: None)
    assert [(r["name"], r["ok"]) for r in runs] == [("01_ok", True), ("02_bad", False)]
    assert "ValueError" in runs[1]["error"]
    assert "rendered quick" in (out / "01_ok.html").read_text()
    assert (out / "02_bad.failed.html").exists() and not (out / "02_bad.html").exists()
    write_index(out, runs)
    assert "FAILED" in (out / "index.html").read_text()


def test_notebook_50_reads_its_workload_from_the_grid_file():
    """Notebook 50's settings come from the packaged grid file its profile names, and equal the
    profile table (so `prunekit sweep comparison-<profile>` runs exactly the notebook's cells)."""
    import json

    from prunekit.experiments import comparison
    from prunekit.experiments.profiles import COMPARISON
    nb = json.loads((Path(__file__).resolve().parents[1] / "notebooks" / "50_comparison.ipynb").read_text())
    code = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert 'comparison.settings_from_grid(grid or f"comparison-{profile}"' in code
    for prof in COMPARISON:
        a, b = comparison.settings(prof), comparison.settings_from_grid(f"comparison-{prof}")
        for k in ("models", "seeds", "groups", "calib_samples", "calib_seqlen", "eval_datasets", "eval_seqlen",
                  "eval_windows", "method_options"):
            assert a[k] == b[k], (prof, k)


@needs_data
def test_notebook_50_runner_records_window_nlls_and_reads_a_filled_results_file(model_dir, tmp_path):
    """comparison.run_grid (notebook 50) goes through the grid runner: every row carries the per-window
    NLLs the paired bootstrap needs (and its perplexity is their exp-mean), and a results file filled
    ahead by `prunekit sweep` is read back without re-running a cell."""
    import math

    from prunekit.cli import main
    from prunekit.experiments import comparison
    g = grid(model_dir, seeds=[0], metrics=["wanda"])
    path = tmp_path / "g.yaml"
    path.write_text(json.dumps(g))
    out = tmp_path / "r.jsonl"
    assert main(["sweep", str(path), "--out", str(out), "--quiet"]) == 0
    before = out.read_text()
    df = comparison.run_grid(str(path), results=out)
    assert out.read_text() == before  # nothing re-run, nothing appended
    assert len(df) == 2 and "cell" not in df
    assert (df["cpu_seconds"] > 0).all() and (df["cpu_seconds"] <= df["seconds"] * 1.05 + 0.5).all()  # 1 thread
    for _, r in df.iterrows():
        assert len(r["nll_wikitext2"]) == 2
        assert math.isclose(r["ppl_wikitext2"], math.exp(sum(r["nll_wikitext2"]) / 2), rel_tol=1e-12)
    fresh = comparison.run_grid(str(path), models=[model_dir])  # no file: computed again, same numbers
    assert fresh["ppl_wikitext2"].tolist() == df["ppl_wikitext2"].tolist()


def test_source_digest_follows_code_not_docs(tmp_path):
    """The results-file key changes with any code or grid edit, committed or not, and not with docs."""
    from prunekit.experiments.sweep import source_digest
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "a.py").write_text("x = 1\n")
    (root / "sub" / "g.yaml").write_text("k: 1\n")
    (root / "README.md").write_text("doc\n")
    d0 = source_digest(root)
    (root / "README.md").write_text("doc, edited\n")
    (root / "sub" / "__pycache__").mkdir()
    (root / "sub" / "__pycache__" / "a.py").write_text("stale\n")
    assert source_digest(root) == d0
    for path, text in ((root / "a.py", "x = 2\n"), (root / "sub" / "g.yaml", "k: 2\n")):
        old = path.read_text()
        path.write_text(text)
        assert source_digest(root) != d0
        path.write_text(old)
        assert source_digest(root) == d0
    (root / "sub" / "a.py").write_text("x = 1\n")  # same content under another path is another package
    assert source_digest(root) != d0


def test_grid_checks_target_relative_options_per_sparsity(tmp_path, capsys):
    """MRP's s0 must lie below each sparsity it runs at: refused for the 0.5 cell before any cell runs."""
    from prunekit.cli import main
    grid = tmp_path / "g.yaml"
    grid.write_text("models: [tiny-llama]\nallocations: [{method: mrp, label: m, options: {s0: 0.6}}]\n"
                    "sparsities: [0.7, 0.5]\ncalibration: {samples: 2, seqlen: 32}\nevaluation: {windows: 1, seqlen: 32}\n")
    out = tmp_path / "r.jsonl"
    assert main(["sweep", str(grid), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "at sparsity 0.5" in err and "'s0' must be <=" in err, err
    assert not out.exists()
