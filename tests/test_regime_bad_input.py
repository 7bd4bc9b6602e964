"""The research commands (``python -m prunekit.experiments.regime`` and ``...svnup_heldout``) refuse
bad input like the CLI does: exit 2, one line on stderr, nothing written, before a model loads.

A model load is made to fail loudly (``Session`` raises), so a case that slips past the checks shows
up as an AssertionError instead of exit 2; the valid controls prove the checks let real input through."""
import json
import os
import re

import pytest

from prunekit.experiments import regime, svnup_heldout


class Loaded(AssertionError):
    pass


@pytest.fixture
def no_load(monkeypatch):
    from prunekit.experiments import session

    def boom(*a, **k):
        raise Loaded("a model was loaded")
    monkeypatch.setattr(session.Session, "__init__", boom)


@pytest.fixture
def files(tmp_path):
    sstar = tmp_path / "sstar.json"
    sstar.write_text(json.dumps({"entries": {f"tiny-llama|{m}|seed0|default": {"s_star": 0.6}
                                             for m in ("wanda", "sparsegpt")}}))
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\nline two")
    (tmp_path / "adir").mkdir()
    os.symlink(notes, tmp_path / "link.jsonl")
    os.mkfifo(tmp_path / "fifo.jsonl")
    return tmp_path


T = ["--model", "tiny-llama"]
# (argv with {d} for the temporary folder, words of the expected error)
REGIME = [
    (["accuracy", *T, "--seeds", "a"], "--seeds 'a'"),
    (["accuracy", *T, "--seeds", "-1"], "--seeds '-1'"),
    (["accuracy", *T, "--seeds", ""], "--seeds ''"),
    (["accuracy", *T, "--limit", "0"], "--limit 0"),
    (["accuracy", *T, "--sparsity", "1.5"], "--sparsity 1.5 must lie in (0, 1)"),
    (["accuracy", *T, "--sparsity", "0", "--sstar-file", "{d}/none.json"], "--sparsity 0.0 must lie in (0, 1)"),
    (["accuracy", *T, "--configs", "foo"], "unknown configuration foo"),
    (["accuracy", *T, "--metric", "foo"], "unknown metric 'foo'"),
    (["accuracy", *T, "--sstar-file", "{d}/none.json"], "does not exist"),
    (["accuracy", *T, "--sstar-file", "{d}/notes.txt"], "is not JSON"),
    (["accuracy", *T, "--metric", "magnitude"], "has no s* for tiny-llama / magnitude"),
    (["accuracy", "--model", "smollm2-135m"], "has no s* for smollm2-135m"),
    (["accuracy", *T, "--out", "{d}/adir"], "is a directory"),
    (["accuracy", *T, "--out", "{d}/missing/x.jsonl"], "does not exist"),
    (["accuracy", *T, "--out", "{d}/notes.txt"], "is not a JSON record"),
    (["accuracy", *T, "--out", "{d}/link.jsonl"], "is a symlink"),
    (["accuracy", *T, "--out", "{d}/fifo.jsonl"], "not a regular file"),
    (["claims", *T, "--allocations", "foo"], "unknown allocation 'foo'"),
    (["claims", *T, "--seeds", "1,x"], "--seeds '1,x'"),
    (["claims", *T, "--metrics", "magnitude"], "has no s* for tiny-llama / magnitude"),
    (["claims", *T, "--metrics", "sparsegpt", "--allocations", "atp"], "no run group"),
    (["claims", *T, "--out", "{d}/fifo.jsonl"], "not a regular file"),
    (["claims", *T, "--dtype", "fp7"], "unknown dtype 'fp7'"),
    (["claims", "--model", "nosuch", "--at", "70"], "unknown model 'nosuch'"),
    (["mrp-score", *T, "--sparsities", "1.5"], "--sparsities '1.5'"),
    (["mrp-score", *T, "--sparsities", "0"], "--sparsities '0'"),
    (["mrp-score", *T, "--sparsities", "nan"], "--sparsities 'nan'"),
    (["mrp-score", *T, "--configs", "bad"], "unknown config 'bad'"),
    (["mrp-score", *T, "--metric", "foo"], "unknown metric 'foo'"),
    (["mrp-score", *T, "--dtype", "fp13"], "unknown dtype 'fp13'"),
    (["mrp-score", *T, "--heldout-samples", "0"], "--heldout-samples 0"),
    (["mrp-score", *T, "--out", "{d}/notes.txt"], "is not a JSON record"),
    (["mrp-score", "--model", "nosuch"], "unknown model 'nosuch'"),
    (["sstar", *T, "--metrics", "magnitude"], "unknown metric 'magnitude'"),
    (["sstar", *T, "--metrics", ","], "unknown metric"),
    (["sstar", *T, "--dtype", "fp13"], "unknown dtype 'fp13'"),
    (["sstar", *T, "--seed", "-2"], "--seed -2"),
    (["sstar", *T, "--tol", "0"], "--tol 0.0"),
    (["sstar", *T, "--calib-samples", "0"], "--calib-samples 0"),
    (["sstar", *T, "--heldout-seqlen", "0"], "--heldout-seqlen 0"),
    (["sstar", *T, "--out", "{d}/notes.txt"], "is not JSON"),
    (["sstar", *T, "--out", "{d}/link.jsonl"], "is a symlink"),
    (["sstar", "--model", "{d}/adir"], "no config.json"),
]
SVNUP = [
    (["--sparsity", "1.5"], "target sparsity in (0, 1), got 1.5"),
    (["--sparsity", "0"], "target sparsity in (0, 1), got 0.0"),
    (["--draws", "1"], "--draws 1"),
    (["--draws", "0"], "--draws 0"),
    (["--window", "0"], "'window' must be >= 1, got 0"),
    (["--background", "foo"], "'background': 'foo' is not one of"),
    (["--heldout-samples", "0"], "'heldout_samples' must be >= 1, got 0"),
    (["--heldout-seqlen", "1"], "'heldout_seqlen' must be >= 2, got 1"),
    (["--model", "nosuch"], "unknown model 'nosuch'"),
    (["--window", "5"], "'window' must be <= the model's 4 blocks, got 5"),  # tiny-llama: 4 blocks
    (["--out", "{d}/missing/v.json"], "does not exist"),
    (["--out", "{d}/notes.txt"], "is not JSON"),
    (["--out", "{d}/fifo.jsonl"], "not a regular file"),
]


def _snapshot(d):
    return {p.name: (p.is_symlink(), p.read_bytes() if p.is_file() and not p.is_fifo() else None)
            for p in sorted(d.rglob("*"))}


def _refused(main, argv, words, d, capsys):
    before = _snapshot(d)
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and words in err, (argv, err)
    assert _snapshot(d) == before, f"{argv} changed the files beside it"


@pytest.mark.parametrize("argv,words", REGIME, ids=[" ".join(a) for a, _ in REGIME])
def test_regime_refuses_before_loading(argv, words, files, no_load, capsys, monkeypatch):
    monkeypatch.chdir(files)
    argv = [x.format(d=files) for x in argv]
    if "--out" not in argv:
        argv += ["--out", str(files / ("s.json" if argv[0] == "sstar" else "r.jsonl"))]
    if argv[0] in ("accuracy", "claims") and "--sstar-file" not in argv:
        argv += ["--sstar-file", str(files / "sstar.json")]
    _refused(regime.main, argv, words, files, capsys)


@pytest.mark.parametrize("argv,words", SVNUP, ids=[" ".join(a) for a, _ in SVNUP])
def test_svnup_heldout_refuses_before_loading(argv, words, files, no_load, capsys):
    argv = [x.format(d=files) for x in argv]
    argv = (["--model", "tiny-llama"] if "--model" not in argv else []) + argv
    argv += [] if "--window" in argv else ["--window", "3"]  # the default 5 is more than tiny-llama's blocks
    argv += [] if "--out" in argv else ["--out", str(files / "v.json")]
    _refused(svnup_heldout.main, argv, words, files, capsys)


@pytest.mark.parametrize("argv", [
    ["sstar", *T], ["mrp-score", *T, "--sparsities", "0.7,0.65"], ["claims", *T, "--seeds", "0"],
    ["accuracy", *T, "--seeds", "0,1", "--limit", "5"], ["claims", *T, "--at", "70", "--metrics", "sparsegpt", "--allocations", "mrp"],
], ids=lambda a: " ".join(a))
def test_valid_regime_input_reaches_the_model(argv, files, no_load, monkeypatch):
    """The controls: valid arguments pass every check and get as far as loading the model."""
    monkeypatch.chdir(files)
    from prunekit.experiments import comparison
    monkeypatch.setattr(comparison, "run_grid", lambda *a, **k: (_ for _ in ()).throw(Loaded("grid ran")))
    argv = argv + ["--out", str(files / ("s.json" if argv[0] == "sstar" else "r.jsonl"))]
    if argv[0] in ("accuracy", "claims"):
        argv += ["--sstar-file", str(files / "sstar.json")]
    with pytest.raises(Loaded):
        regime.main(argv)


def test_accuracy_at_a_given_sparsity_needs_no_sstar(files, no_load, monkeypatch):
    """``accuracy --sparsity 0.5`` prunes at 0.5 and never reads the s* file; without it, the s*."""
    from prunekit.experiments import accuracy
    seen = []

    def fake(model, sparsity, *a, **k):
        seen.append(sparsity)
        raise Loaded("ran")
    monkeypatch.setattr(accuracy, "run_accuracy", fake)
    for extra, want in ((["--sparsity", "0.5", "--sstar-file", str(files / "none.json")], 0.5),
                        (["--sstar-file", str(files / "sstar.json")], 0.6)):
        with pytest.raises(Loaded):
            regime.main(["accuracy", *T, "--out", str(files / "r.jsonl"), *extra])
        assert seen[-1] == want


def test_claims_dtype_reaches_every_cell_of_the_grid(files, monkeypatch):
    """``claims --dtype fp32`` runs the same grid cells in fp32 (the dtype study), and without it the
    grid's own dtype (the device default) is kept."""
    from prunekit.experiments import comparison, sweep
    seen = []

    def fake(mapping, out=None, progress=False):
        seen.append(sweep.load_grid(mapping))
        raise Loaded("grid ran")
    monkeypatch.setattr(sweep, "run_grid", fake)
    for extra, want in ((["--dtype", "fp32"], "fp32"), ([], None)):
        with pytest.raises(Loaded):
            regime.main(["claims", *T, "--at", "70", "--metrics", "wanda", "--allocations", "uniform",
                         "--out", str(files / "r.jsonl"), *extra])
        assert seen[-1].dtype == want
        assert {c["dtype"] for c in seen[-1].cells()} == {want}
    assert comparison.grid_mapping("comparison-cpu").get("dtype") is None


def test_valid_svnup_heldout_input_reaches_the_model(files, no_load):
    with pytest.raises(Loaded):
        svnup_heldout.main(["--model", "tiny-llama", "--window", "3", "--background", "absent",
                            "--out", str(files / "v.json")])
    assert not (files / "v.json").exists()


def test_sstar_for_names_what_is_missing(files):
    from prunekit.errors import PrunekitError
    assert regime.sstar_for(files / "sstar.json", ["tiny-llama"]) == {"tiny-llama": {"wanda": 0.6, "sparsegpt": 0.6}}
    (files / "foreign.json").write_text('{"a": 1}')
    for path, models, words in [(files / "none.json", ["tiny-llama"], "does not exist"),
                                (files / "sstar.json", ["tiny-llama", "gemma3-270m"], "no s* for gemma3-270m"),
                                (files / "foreign.json", ["tiny-llama"], "no 'entries' object"),
                                (files / "fifo.jsonl", ["tiny-llama"], "not a regular file")]:
        with pytest.raises(PrunekitError, match=re.escape(words)):
            regime.sstar_for(path, models)


def test_accuracy_files_are_checked_as_accuracy_runs(files):
    from prunekit.errors import PrunekitError
    from prunekit.experiments.accuracy import read_runs
    (files / "sweep.jsonl").write_text('{"cell": "x", "perplexity": {}}\n')
    assert read_runs(files / "none.jsonl") == []
    for path, kw, words in [(files / "none.jsonl", {"must_exist": True}, "does not exist"),
                            (files / "sweep.jsonl", {}, "not an accuracy run"),
                            (files / "notes.txt", {}, "not a JSON record")]:
        with pytest.raises(PrunekitError, match=words):
            read_runs(path, **kw)


def test_notebook_50_reads_its_regime_files_before_the_first_run():
    """A wrong ``sstar_file`` / ``accuracy_files`` must fail in the settings cell, not after the 70 % grid."""
    from pathlib import Path
    nb = json.loads((Path(__file__).parents[1] / "notebooks" / "50_comparison.ipynb").read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    first_run = next(i for i, s in enumerate(code) if "run_models(" in s)
    checks = [i for i, s in enumerate(code) if "sstar_for(" in s or "read_runs(f, must_exist=True)" in s]
    assert checks and max(checks) < first_run


def test_read_jsonl_returns_objects_and_names_the_line_that_is_not_one(files):
    from prunekit.errors import PrunekitError
    from prunekit.utils import read_jsonl
    recs = [{"a": 1}, {"b": [2, 3]}]
    (files / "ok.jsonl").write_text(json.dumps(recs[0]) + "\n\n" + json.dumps(recs[1]) + "\n")
    assert read_jsonl(files / "ok.jsonl") == recs and read_jsonl(files / "none.jsonl") == []
    for body, line in [('{"a": 1}\n[1, 2]\n', 2), ('{"a": 1}\n{"a": \n', 2), ("7\n", 1)]:
        (files / "bad.jsonl").write_text(body)
        with pytest.raises(PrunekitError, match=re.escape(f"bad.jsonl:{line} is not a JSON record")):
            read_jsonl(files / "bad.jsonl")
    with pytest.raises(PrunekitError, match="not a regular file"):
        read_jsonl(files / "fifo.jsonl")
