"""The one-call API: ``prunekit.prune`` gives the record ``prunekit prune --out`` writes (same run,
same numbers), accepts a name, a Runtime or an in-memory model, checks options before loading, and
``prunekit.save`` writes a directory that loads back to the same weights with its record."""
from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import hf_byte_tokenizer, tiny_model

import prunekit
from prunekit.cli import main
from prunekit.core.runtime import Runtime
from prunekit.errors import PrunekitError

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not os.environ.get("PRUNEKIT_DATA_DIR"), reason="PRUNEKIT_DATA_DIR not set")]

RUN = dict(calib_samples=2, calib_seqlen=32, batch_size=2, seed=3)
# fields that differ between two runs of the same settings, or that only the CLI adds
VOLATILE = {"timings_s", "provenance", "versions"}


@pytest.fixture
def tiny_dir(tmp_path):
    d = tmp_path / "tiny"
    m = tiny_model("llama", vocab=len(hf_byte_tokenizer()))
    m.save_pretrained(d, safe_serialization=True)
    hf_byte_tokenizer().save_pretrained(d)
    return d


def _comparable(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in VOLATILE}


def test_prune_equals_the_cli_record(tiny_dir, tmp_path):
    out = tmp_path / "r.json"
    assert main(["prune", "--model", str(tiny_dir), "--metric", "wanda", "--sparsity", "0.6", "--allocation", "owl",
                 "--owl-lambda", "0.05", "--calib-samples", "2", "--calib-seqlen", "32", "--batch-size", "2",
                 "--seed", "3", "--eval", "wikitext2", "--eval-seqlen", "32", "--eval-windows", "2",
                 "--quiet", "--out", str(out)]) == 0
    cli = json.loads(out.read_text())
    rt, rec = prunekit.prune(str(tiny_dir), "wanda", 0.6, "owl", lam=0.05, eval_datasets=("wikitext2",),
                             eval_seqlen=32, eval_windows=2, progress=False, **RUN)
    assert isinstance(rt, Runtime)
    mine = json.loads(json.dumps(_comparable(rec), default=str))
    assert mine == _comparable(cli)
    # the record's provenance names the dense model it pruned (the fingerprint taken before pruning)
    assert cli["provenance"]["models"] == [cli["model_provenance"]]
    assert cli["model_provenance"]["fingerprint"] == prunekit.load_model(str(tiny_dir), "cpu").fingerprint()
    assert rec["global_sparsity"] == pytest.approx(0.6, abs=0.01)


def test_prune_takes_a_runtime_or_a_model_and_saves(tiny_dir, tmp_path):
    tok = hf_byte_tokenizer()
    ref_rt, ref = prunekit.prune(str(tiny_dir), "magnitude", 0.5, progress=False, **RUN)
    model = prunekit.load_model(str(tiny_dir), "cpu", "fp32").model
    rt, rec = prunekit.prune(model, "magnitude", 0.5, tokenizer=tok, progress=False, **RUN)
    assert rt.model is model  # pruned in place
    assert rec["layer_sparsity"] == ref["layer_sparsity"]
    d = prunekit.save(rt, tmp_path / "saved", rec)
    back = prunekit.load_model(str(d), "cpu", "fp32")
    for i in range(back.num_blocks):
        for n, lin in back.layout.linears(i).items():
            assert torch.equal(lin.weight, rt.layout.linears(i)[n].weight), (i, n)
    saved = json.loads((d / "prunekit_record.json").read_text())
    assert saved["layer_sparsity"] == rec["layer_sparsity"] and saved["saved_model"] == str(tmp_path / "saved")


def test_prune_checks_options_before_loading(monkeypatch):
    import prunekit.core.loading as L

    def boom(*a, **k):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr(L, "load_model", boom)
    monkeypatch.setattr("prunekit.experiments.session.load_model", boom)
    with pytest.raises(PrunekitError, match="owl has no option 'bogus'"):
        prunekit.prune("tiny-llama", "wanda", 0.5, "owl", bogus=1)
    with pytest.raises(PrunekitError, match="needs tokenizer="):
        prunekit.prune(tiny_model("llama"), "wanda", 0.5)
