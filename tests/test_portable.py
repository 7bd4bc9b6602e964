"""Saved models every supported transformers reads: a model saved by prunekit under transformers 5
loads with the last 4.x (4.57.6) in its own venv, with the same tokens and the same logits.

Cost: the 4.x venv (torch 2.13.0 CPU + transformers 4.57.6) is built once into
``$PRUNEKIT_CACHE/venvs`` (59 s measured on a warm pip cache, ~1 GB); each run then saves four
tiny models and starts one 4.x subprocess: 18 s measured on a loaded 2-core machine."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import hf_byte_tokenizer, tiny_model

pytestmark = pytest.mark.slow  # builds (once) and runs a second venv

TRANSFORMERS_4 = "transformers==4.57.6"  # the last 4.x release
TEXT = "Pruned models load anywhere: 4.x and 5.x."

V4_SCRIPT = r"""
import json, sys, torch, transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
assert transformers.__version__.startswith("4."), transformers.__version__
out = {}
for d in json.loads(sys.argv[1]):
    tok = AutoTokenizer.from_pretrained(d)
    cfg = AutoConfig.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    ids = json.loads(sys.argv[2])
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    out[d] = {"ids": tok(sys.argv[3])["input_ids"], "logits": logits.tolist(),
              "rope_theta": getattr(cfg, "rope_theta", None), "tokenizer": type(tok).__name__}
print(json.dumps(out))
"""


@pytest.fixture(scope="session")
def v4_python():
    from venvs import cached_venv
    try:
        return cached_venv("transformers4", [[TRANSFORMERS_4, "safetensors", "accelerate"]])
    except RuntimeError as e:  # no package index reachable
        pytest.skip(f"cannot build the transformers 4.x venv: {str(e).splitlines()[0]}")


def _saved_models(tmp_path) -> dict[str, tuple[Path, object, object]]:
    """Tiny random models of each family with a byte-level tokenizer, saved by prunekit; one with a
    non-default RoPE base (4.x would silently fall back to 10 000 without the legacy field)."""
    from prunekit.core.runtime import Runtime
    from prunekit.core.saving import save_model
    out = {}
    for kind, extra in (("llama", {"rope_parameters": {"rope_type": "default", "rope_theta": 100000.0}}),
                        ("qwen2", {}), ("gemma3", {})):
        tok = hf_byte_tokenizer()
        model = tiny_model(kind, vocab=len(tok), layers=2, **extra)
        d = save_model(Runtime.of(model, tok), tmp_path / kind)
        out[kind] = (Path(d), model, tok)
    return out


def test_saved_models_load_with_transformers_4(v4_python, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    saved = _saved_models(tmp_path)
    dirs = {str(d): (m, t) for d, m, t in saved.values()}
    ids = [3, 17, 42, 99, 5, 64, 200, 7, 128, 250, 11, 1]
    if os.environ.get("PRUNEKIT_DATA_DIR"):  # the real SmolLM2 tokenizer, saved by `prunekit prune`
        from prunekit.cli import main
        cli_dir = tmp_path / "cli-model"
        assert main(["prune", "--model", "tiny-llama", "--metric", "magnitude", "--sparsity", "0.5", "--eval", "",
                     "--quiet", "--threads", "1", "--save-model", str(cli_dir)]) == 0
        dirs[str(cli_dir)] = (None, None)
    r = subprocess.run([str(v4_python), "-c", V4_SCRIPT, json.dumps(list(dirs)), json.dumps(ids), TEXT],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": ""})
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    for d, (model, tok) in dirs.items():
        # the reference: transformers 5 (this process), the in-memory model and a reload from disk
        tok5 = tok or AutoTokenizer.from_pretrained(d)
        assert got[d]["ids"] == tok5(TEXT)["input_ids"], d
        reloaded = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        with torch.no_grad():
            ref = reloaded(torch.tensor([ids])).logits[0]
            if model is not None:
                torch.testing.assert_close(model(torch.tensor([ids])).logits[0], ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.tensor(got[d]["logits"]), ref, rtol=1e-4, atol=1e-4, msg=d)
    assert got[str(saved["llama"][0])]["rope_theta"] == 100000.0
