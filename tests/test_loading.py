"""Model loading and saving (prunekit/core/loading.py, saving.py): errors, unsupported architectures, round trip."""
from __future__ import annotations

import pytest
import torch
from conftest import tiny_calib, tiny_model

from prunekit.core.architectures import layout
from prunekit.core.loading import load_model
from prunekit.core.saving import save_model
from prunekit.errors import PrunekitError
from prunekit.solvers.prune import prune_model
from prunekit.core.runtime import Runtime


def test_model_errors(tmp_path):
    with pytest.raises(PrunekitError, match="unknown model"):
        load_model("no-such-alias")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 100)
    with pytest.raises(PrunekitError, match="not a GGUF"):
        load_model(str(bad))
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(PrunekitError, match="config.json"):
        load_model(str(tmp_path / "emptydir"))


def test_unsupported_architecture_is_named():
    import transformers as tf
    cfg = tf.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64)
    with pytest.raises(PrunekitError, match="unsupported architecture 'gpt2'"):
        layout(tf.GPT2LMHeadModel(cfg))


def test_save_and_reload_roundtrip(tmp_path):
    model = tiny_model("llama")
    prune_model(model, tiny_calib().input_ids, 0.5, "wanda", progress=False)

    class Tok:
        def save_pretrained(self, d):
            pass
    out = save_model(Runtime.of(model, Tok()), tmp_path / "pruned")
    import transformers as tf
    back = tf.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    sd = back.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k  # bit-exact weights, zeros included
    ids = torch.randint(0, 256, (1, 20))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, back(ids).logits)
    with pytest.raises(PrunekitError, match="not empty"):
        save_model(Runtime.of(model, Tok()), out)
