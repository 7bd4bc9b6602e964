"""``python -m prunekit.experiments.svnup_quality``: the default SV-NUP plan against a reference plan.

The identity behind the first test: a sliding window as wide as the model is exact Shapley of the
whole game (no player lies outside it, so 'both' averages two equal estimates). On a 5-block model
the default plan (w = 5) must therefore be the exact-reference plan bit for bit, and the quality
exactly 1; any difference between the two runs' games (held-out set, base metric, mapping) breaks it."""
import json

import pytest

from prunekit.experiments import svnup_quality
from tests.conftest import saved_tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = ["--seeds", "0", "--calib-samples", "2", "--calib-seqlen", "32"]


@pytest.fixture(scope="module")
def five_blocks(tmp_path_factory):
    return saved_tiny_llama(tmp_path_factory.mktemp("m") / "llama5", hidden_size=32, intermediate_size=64,
                            num_hidden_layers=5, num_attention_heads=2, num_key_value_heads=1,
                            max_position_embeddings=2048)


def test_default_plan_is_the_exact_plan_when_the_window_spans_the_model(five_blocks, tmp_path):
    out = tmp_path / "q.json"
    assert svnup_quality.main(["--model", five_blocks, "--reference", "exact", *SMALL, "--out", str(out)]) == 0
    (entry,) = json.loads(out.read_text())["entries"].values()
    d, r = entry["default"], entry["reference"]
    assert d["heldout"] == r["heldout"]
    assert d["values"] == pytest.approx(r["values"], abs=1e-12)
    assert d["planned_sparsity"] == r["planned_sparsity"]
    assert entry["summary"]["quality"] == 1.0 and entry["summary"]["spearman"] == pytest.approx(1.0)
    assert d["evaluations"] == r["evaluations"] == 2 ** 5  # every coalition of 5 blocks, once


def test_a_rerun_reads_every_run_back(five_blocks, tmp_path, monkeypatch):
    out = tmp_path / "q.json"
    argv = ["--model", five_blocks, "--reference", "monte_carlo", "--permutations", "2", *SMALL, "--out", str(out)]
    assert svnup_quality.main(argv) == 0
    before = out.read_bytes()
    entry = next(iter(json.loads(before)["entries"].values()))
    assert entry["summary"]["quality"] == entry["default"]["ppl"] / entry["reference"]["ppl"]
    assert entry["reference"]["options"] == {"estimator": "monte_carlo", "n_permutations": 2, "seed": 12345}
    from prunekit.experiments import session

    def boom(*a, **k):
        raise AssertionError("a model was loaded on a complete file")
    monkeypatch.setattr(session.Session, "__init__", boom)
    assert svnup_quality.main(argv) == 0
    assert out.read_bytes() == before


@pytest.mark.parametrize("argv,words", [
    (["--seeds", "a"], "--seeds"),
    (["--sparsity", "1"], "--sparsity 1.0 must lie in (0, 1)"),
    (["--reference", "sliding_window"], "choose from monte_carlo, exact"),
    (["--permutations", "0"], "--permutations 0 must be >= 1"),
    (["--calib-seqlen", "0"], "--calib-seqlen 0 must be >= 1"),
    (["--model", "nosuch"], "unknown model 'nosuch'"),
    (["--out", "{d}/missing/q.json"], "does not exist"),
    (["--out", "{d}/notes.txt"], "is not JSON"),
])
def test_bad_input_is_refused_before_the_model_loads(argv, words, tmp_path, capsys, monkeypatch):
    from prunekit.experiments import session

    def boom(*a, **k):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr(session.Session, "__init__", boom)
    (tmp_path / "notes.txt").write_text("my notes")
    argv = [x.format(d=tmp_path) for x in argv]
    argv = (["--model", "tiny-llama"] if "--model" not in argv else []) + argv
    argv += [] if "--out" in argv else ["--out", str(tmp_path / "q.json")]
    assert svnup_quality.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and words in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "my notes"
