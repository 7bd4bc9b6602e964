"""Integration on the embedded SmolLM2-135M (slow: real model, real data)."""
from __future__ import annotations

import json
import math

import pytest
from conftest import needs_data

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def session():
    from prunekit.experiments.session import Session
    return Session(model_name="smollm2-135m", calib_samples=8, calib_seqlen=256, eval_seqlen=512,
                   eval_windows=4, progress=False)


@needs_data
def test_dense_perplexity_is_plausible(session):
    ppl = session.dense()["wikitext2"]
    assert 10 < ppl < 60, ppl


@needs_data
def test_wanda_and_sparsegpt_beat_magnitude_at_half(session):
    ppl = {m: session.run("uniform", m, 0.5)["perplexity"]["wikitext2"] for m in ("magnitude", "wanda", "sparsegpt")}
    dense = session.dense()["wikitext2"]
    assert ppl["wanda"] < ppl["magnitude"] and ppl["sparsegpt"] < ppl["magnitude"], ppl
    assert min(ppl.values()) > dense


@needs_data
def test_cli_prune_save_and_reload(tmp_path):
    from prunekit.cli import main
    out, saved = tmp_path / "run.json", tmp_path / "pruned"
    assert main(["prune", "--model", "smollm2-135m", "--metric", "wanda", "--sparsity", "0.5",
                 "--calib-samples", "4", "--calib-seqlen", "128", "--eval", "wikitext2",
                 "--eval-seqlen", "256", "--eval-windows", "2", "--out", str(out),
                 "--save-model", str(saved), "--quiet"]) == 0
    rec = json.loads(out.read_text())
    for key in ("model", "metric", "allocation", "target_sparsity", "layer_sparsity", "global_sparsity",
                "perplexity", "tokens_evaluated", "seed", "timings_s", "versions", "data_sha256"):
        assert key in rec
    assert rec["global_sparsity"] == 0.5 and len(rec["layer_sparsity"]) == 30  # round(n·s): exact
    back = tmp_path / "back.json"
    assert main(["eval", "--model", str(saved), "--eval", "wikitext2", "--eval-seqlen", "256",
                 "--eval-windows", "2", "--out", str(back), "--quiet"]) == 0
    rb = json.loads(back.read_text())
    assert math.isclose(rb["perplexity"]["wikitext2"], rec["perplexity"]["wikitext2"], rel_tol=1e-6)
    assert abs(rb["global_sparsity"] - rec["global_sparsity"]) < 1e-9
