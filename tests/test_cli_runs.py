"""Whole CLI runs on a tiny model: --owl-metric reaches OWL, N:M and round targets are realised
exactly, a failure after pruning writes nothing, a failure while saving the model keeps the complete
JSON, saved models are world-readable, and the reports CLI rejects a missing notebooks directory."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from prunekit.cli import main

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not os.environ.get("PRUNEKIT_DATA_DIR"), reason="PRUNEKIT_DATA_DIR not set")]

USER_CACHE = Path(os.environ.get("PRUNEKIT_CACHE", Path.home() / ".cache" / "prunekit"))


def smollm2_tokenizer_dir() -> Path | None:
    for d in sorted((USER_CACHE / "dense").glob("SmolLM2-135M-Instruct*")):
        if (d / "tokenizer.json").is_file():
            return d
    return None


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A 4-block random LLaMA with SmolLM2's tokenizer as a HF directory (what tiny-llama builds)."""
    src = smollm2_tokenizer_dir()
    if src is None:
        pytest.skip("SmolLM2 tokenizer not in the user cache")
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    tok = AutoTokenizer.from_pretrained(src)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=176, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny") / "model"
    LlamaForCausalLM(cfg).save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    return d


def argv(model, *extra):
    return ["prune", "--model", str(model), "--calib-samples", "2", "--calib-seqlen", "32", "--eval-windows", "1",
            "--eval-seqlen", "32", "--batch-size", "2", "--quiet", *extra]


def test_owl_metric_reaches_owl(tiny_dir, tmp_path, capsys):
    recs = {}
    for metric in ("wanda", "magnitude"):
        out = tmp_path / f"{metric}.json"
        assert main(argv(tiny_dir, "--sparsity", "0.6", "--allocation", "owl", "--owl-metric", metric,
                         "--owl-lambda", "0.2", "--metric", "magnitude", "--out", str(out))) == 0
        recs[metric] = json.loads(out.read_text())
        assert recs[metric]["allocation_options"]["metric"] == metric
    # OWL's outlier ratios under the two metrics differ, and so do the plans
    assert recs["wanda"]["planned_sparsity"] != recs["magnitude"]["planned_sparsity"]


@pytest.mark.parametrize("metric, sparsity", [("wanda", 0.5), ("magnitude", 0.75), ("sparsegpt", 0.5)])
def test_round_targets_are_realised_exactly(tiny_dir, tmp_path, metric, sparsity):
    """Uniform plans at targets whose n·s are integers on every comparison group (rows of 64/176,
    whole matrices, 128-column SparseGPT blocks): zero shortfall, not the old int() truncation."""
    out = tmp_path / "r.json"
    assert main(argv(tiny_dir, "--metric", metric, "--sparsity", str(sparsity), "--out", str(out))) == 0
    rec = json.loads(out.read_text())
    assert rec["global_sparsity"] == sparsity
    assert all(s == sparsity for s in rec["layer_sparsity"])


def test_nm_is_exact(tiny_dir, tmp_path):
    out = tmp_path / "r.json"
    assert main(argv(tiny_dir, "--metric", "wanda", "--nm", "2:4", "--out", str(out))) == 0
    assert json.loads(out.read_text())["global_sparsity"] == 0.5


def test_failure_after_pruning_writes_nothing(tiny_dir, tmp_path, monkeypatch, capsys):
    import prunekit.experiments.session as S

    def broken(*a, **k):
        raise RuntimeError("evaluation exploded")
    monkeypatch.setattr(S, "perplexity", broken)
    out = tmp_path / "r.json"
    assert main(argv(tiny_dir, "--sparsity", "0.5", "--out", str(out), "--save-model", str(tmp_path / "m"))) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--debug" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # the token cache only


def test_failed_model_save_keeps_the_json(tiny_dir, tmp_path, monkeypatch, capsys):
    import prunekit.core.saving as M

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(M, "save_model", full_disk)
    out = tmp_path / "r.json"
    assert main(argv(tiny_dir, "--sparsity", "0.5", "--out", str(out), "--save-model", str(tmp_path / "m"))) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left" in err and str(out) in err
    rec = json.loads(out.read_text())
    assert rec["global_sparsity"] == 0.5 and "perplexity" in rec and "saved_model" not in rec


def test_saved_model_modes_and_reload(tiny_dir, tmp_path, capsys):
    out, saved = tmp_path / "r.json", tmp_path / "saved"
    old = os.umask(0o022)
    try:
        assert main(argv(tiny_dir, "--sparsity", "0.5", "--out", str(out), "--save-model", str(saved))) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(saved.stat().st_mode) == 0o755
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in saved.iterdir()}
    assert modes and all(m == 0o644 for m in modes.values()), modes
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert json.loads(out.read_text())["saved_model"] == str(saved)
    assert main(["eval", "--model", str(saved), "--eval-windows", "1", "--eval-seqlen", "32", "--quiet",
                 "--out", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["global_sparsity"] == 0.5


def test_reports_missing_notebooks_dir_exits_2(tmp_path, capsys):
    from prunekit.reporting.render import main as reports
    assert reports(["--notebooks", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing" in err
    assert not (tmp_path / "out").exists()


def test_bars_follow_the_terminal_policy(tiny_dir, tmp_path):
    """Subprocess with stderr to a pipe (a log file): no bars at all, not even transformers'
    "Loading weights"; --progress forces them; TQDM_DISABLE=1 wins over --progress."""
    import subprocess
    import sys
    base = [sys.executable, "-m", "prunekit.cli", "eval", "--model", str(tiny_dir), "--eval-windows", "1",
            "--eval-seqlen", "32"]
    env = {**os.environ, "PRUNEKIT_CACHE": str(tmp_path / "cache")}
    env.pop("TQDM_DISABLE", None)
    env.pop("PRUNEKIT_PROGRESS", None)
    runs = {"pipe": (base, env), "forced": (base + ["--progress"], env),
            "tqdm-disable": (base + ["--progress"], {**env, "TQDM_DISABLE": "1"})}
    err = {k: subprocess.run(a, env=e, capture_output=True, text=True, cwd=Path(__file__).parents[1],
                             timeout=300).stderr for k, (a, e) in runs.items()}
    assert "it/s" not in err["pipe"] and "Loading weights" not in err["pipe"], err["pipe"]
    assert "Loading weights" in err["forced"] and "ppl[wikitext2]" in err["forced"]
    assert "it/s" not in err["tqdm-disable"] and "Loading weights" not in err["tqdm-disable"]
