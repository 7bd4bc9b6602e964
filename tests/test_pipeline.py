"""Foundation: models adapter, calibration engine, pruning metrics, perplexity, budget fitting."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from conftest import tiny_calib, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.allocation.plan import fit_budget
from prunekit.core.engine import capture, sequential
from prunekit.core.models import layout, load_model, save_model
from prunekit.errors import PrunekitError
from prunekit.evaluation.perplexity import perplexity_from_nlls, window_nlls
from prunekit.solvers.masks import magnitude_mask, parse_nm, wanda_mask
from prunekit.solvers.prune import measure_sparsity, prune_model
from prunekit.solvers.sparsegpt import sparsegpt

FAMILIES = ["llama", "qwen2", "gemma3", "opt"]


@pytest.mark.parametrize("kind", FAMILIES)
def test_block_by_block_equals_full_forward(kind):
    model = tiny_model(kind)
    calib = tiny_calib(n=5, seqlen=24)
    lay = layout(model)
    assert len(lay.linear_names) == (6 if kind == "opt" else 7)
    ref = {}
    h = lay.blocks[-1].register_forward_hook(lambda m, i, o: ref.update(out=o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        model(input_ids=calib.input_ids, use_cache=False)
    h.remove()
    acts = sequential(model, calib.input_ids, collect=(), on_block=None, batch_size=2, progress=False)
    got = torch.cat(acts.hidden)  # batches of 2, 2, 1: kwargs captured per batch size
    assert (got - ref["out"]).abs().max().item() < 1e-4


def test_gemma3_blocks_receive_their_own_masks():
    model = tiny_model("gemma3")
    acts = capture(model, tiny_calib(n=2, seqlen=24).input_ids, batch_size=2)
    masks = [kw.get("attention_mask") for kw in acts.kwargs[2]]
    assert masks[0] is not None and not torch.equal(masks[0], masks[1])  # sliding vs full


def test_dense_pass_leaves_model_unchanged_and_collects_stats():
    model = tiny_model("llama")
    before = copy.deepcopy(model.state_dict())
    seen = {}
    calib = tiny_calib(n=4, seqlen=16)

    def on_block(i, block, stats):
        seen[i] = stats["wanda"]["self_attn.q_proj"].nseq

    sequential(model, calib.input_ids, collect=("wanda",), on_block=on_block, modifies=False, progress=False)
    assert seen == {i: 4 for i in range(4)}
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_wanda_statistic_matches_direct_computation():
    model = tiny_model("llama")
    calib = tiny_calib(n=3, seqlen=16)
    inputs = {}
    lin = layout(model).linears(0)["mlp.down_proj"]
    hh = lin.register_forward_hook(lambda m, i, o: inputs.update(x=i[0].detach().clone()))
    with torch.no_grad():
        model(input_ids=calib.input_ids, use_cache=False)
    hh.remove()
    got = {}
    sequential(model, calib.input_ids, collect=("wanda", "hessian"),
               on_block=lambda i, b, s: got.update({i: s}), modifies=False, progress=False)
    x = inputs["x"].reshape(-1, lin.in_features).double()
    scaler = (x ** 2).sum(0) / 3  # (1/N_seq) Σ_seq Σ_t x²
    assert torch.allclose(got[0]["wanda"]["mlp.down_proj"].scaler_row.double(), scaler, rtol=1e-4)
    H = 2.0 / 3 * x.T @ x
    assert torch.allclose(got[0]["hessian"]["mlp.down_proj"].H.double(), H, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("s", [0.3, 0.5, 0.7])
def test_wanda_exact_per_row_sparsity(s):
    torch.manual_seed(1)
    W, norm = torch.randn(16, 40), torch.rand(40) + 0.1
    mask = wanda_mask(W, norm, s)
    assert (mask.sum(1) == math.floor(40 * s + 0.5)).all()  # round(n·s), no float truncation
    # pruned entries are the row's lowest scores: brute force per row
    score = W.abs() * norm
    for r in range(16):
        kept_min = score[r][~mask[r]].min()
        assert (score[r][mask[r]] <= kept_min).all()


@pytest.mark.parametrize("nm", [(2, 4), (4, 8)])
def test_nm_every_group_has_exactly_n_zeros(nm):
    n, m = nm
    torch.manual_seed(2)
    W, norm = torch.randn(8, 32), torch.rand(32) + 0.1
    H = (lambda X: X.T @ X)(torch.randn(200, 32))
    for mask in (magnitude_mask(W, 0, nm), wanda_mask(W, norm, 0, nm)):
        assert (mask.reshape(8, -1, m).sum(-1) == n).all()
    Wq = sparsegpt(W, H, 0.0, nm=nm, blocksize=16)
    assert ((Wq == 0).reshape(8, -1, m).sum(-1) == n).all()


def test_magnitude_prunes_the_smallest_globally():
    torch.manual_seed(3)
    W = torch.randn(10, 20)
    mask = magnitude_mask(W, 0.6)
    assert mask.sum() == int(200 * 0.6)
    assert W.abs()[mask].max() <= W.abs()[~mask].min()


def test_sparsegpt_reconstruction_beats_magnitude_and_wanda():
    torch.manual_seed(4)
    d_in, d_out, n = 64, 32, 512
    mix = torch.randn(d_in, d_in) * 0.3 + torch.eye(d_in)
    X = torch.randn(n, d_in) @ mix * (torch.rand(d_in) * 3)  # correlated, uneven columns
    W = torch.randn(d_out, d_in)
    H = 2.0 / n * X.T @ X
    norm = X.pow(2).sum(0).sqrt()
    err = {}
    for s in (0.5, 0.7):
        Wm = W.masked_fill(magnitude_mask(W, s), 0)
        Ww = W.masked_fill(wanda_mask(W, norm, s), 0)
        Ws = sparsegpt(W, H, s, blocksize=16)
        assert abs((Ws == 0).float().mean().item() - s) < 0.02
        err = {k: torch.linalg.norm(X @ (W - V).T).item() for k, V in (("mag", Wm), ("wanda", Ww), ("sgpt", Ws))}
        assert err["sgpt"] < err["wanda"] and err["sgpt"] < err["mag"], err


def test_sparsegpt_zero_sparsity_is_identity_up_to_damping():
    torch.manual_seed(5)
    W = torch.randn(8, 32)
    X = torch.randn(300, 32)
    Ws = sparsegpt(W, 2 / 300 * X.T @ X, 0.0)
    assert torch.allclose(Ws, W, atol=1e-5)


@pytest.mark.parametrize("metric", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("kind", ["llama", "opt"])
def test_prune_model_realised_sparsity(metric, kind):
    model = tiny_model(kind)
    rep = prune_model(model, tiny_calib(n=4, seqlen=16).input_ids, 0.5, metric, progress=False)
    assert rep["global_sparsity"] == 0.5  # n·0.5 is whole on every comparison group: exact
    assert all(s == 0.5 for s in rep["layer_sparsity"])
    assert measure_sparsity(model)["global_sparsity"] == rep["global_sparsity"]


def test_prune_model_follows_a_per_block_plan():
    model = tiny_model("llama")
    plan = np.array([0.2, 0.4, 0.6, 0.8])
    rep = prune_model(model, tiny_calib().input_ids, plan, "wanda", progress=False)
    assert np.allclose(rep["layer_sparsity"], plan, atol=0.5 / 64 + 1e-9)  # round(d_in*s) per row: half a weight


def test_later_blocks_are_calibrated_on_the_pruned_model():
    # Block 1's Wanda statistics must come from pruned block-0 outputs (sequential pipeline §0.2)
    calib = tiny_calib(n=3, seqlen=16)
    m1 = tiny_model("llama")
    norms = {}

    def grab(i, block, stats):
        norms.setdefault(i, stats["wanda"]["self_attn.q_proj"].norm.clone())
        from prunekit.solvers.prune import prune_block
        prune_block(i, block, stats, np.full((4, 7), 0.9), "wanda", None, layout(m1).linear_names)

    sequential(m1, calib.input_ids, collect=("wanda",), on_block=grab, progress=False)
    m2 = tiny_model("llama")
    dense = {}
    sequential(m2, calib.input_ids, collect=("wanda",), modifies=False, progress=False,
               on_block=lambda i, b, s: dense.setdefault(i, s["wanda"]["self_attn.q_proj"].norm.clone()))
    assert torch.allclose(norms[0], dense[0])
    assert not torch.allclose(norms[1], dense[1])


def test_bad_nm_and_sparsity():
    with pytest.raises(PrunekitError):
        parse_nm("4:2")
    with pytest.raises(PrunekitError):
        parse_nm("2-4")
    model = tiny_model("llama")
    with pytest.raises(PrunekitError, match="does not divide"):
        prune_model(model, tiny_calib().input_ids, 0.5, "wanda", nm="2:5", progress=False)
    with pytest.raises(PrunekitError):
        prune_model(model, tiny_calib().input_ids, 1.0, "wanda", progress=False)
    with pytest.raises(PrunekitError):
        prune_model(model, tiny_calib().input_ids, 0.5, "nope", progress=False)


def test_perplexity_equals_exp_mean_nll_computed_independently():
    model = tiny_model("llama")
    torch.manual_seed(6)
    ids = torch.randint(0, 256, (1, 16 * 5 + 7))
    nlls = window_nlls(model, ids, 16, progress=False)
    assert len(nlls) == 5
    losses = []
    with torch.no_grad():
        for i in range(5):
            x = ids[:, i * 16:(i + 1) * 16]
            losses.append(model(input_ids=x, labels=x).loss.item())  # HF's own shifted CE
    assert math.isclose(perplexity_from_nlls(nlls, 16), math.exp(np.mean(losses)), rel_tol=1e-5)
    assert len(window_nlls(model, ids, 16, max_windows=2, progress=False)) == 2
    nb = window_nlls(model, ids, 16, batch_size=3, progress=False)
    assert torch.allclose(nb, nlls, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1, 2), min_size=2, max_size=12), st.floats(0.05, 0.95),
       st.lists(st.integers(1, 5), min_size=12, max_size=12))
def test_fit_budget_is_exact_and_bounded(vals, target, sizes):
    v = np.array(vals)
    sz = np.array(sizes[: len(v)], dtype=float)
    out = fit_budget(v, sz, target, 0.0, 0.99)
    assert abs((out * sz).sum() / sz.sum() - target) < 1e-6
    assert out.min() >= 0.0 and out.max() <= 0.99
    # order preserved (an additive shift with clipping is monotone)
    order = np.argsort(v, kind="stable")
    assert np.all(np.diff(out[order]) >= -1e-12)


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
    out = save_model(model, Tok(), tmp_path / "pruned")
    import transformers as tf
    back = tf.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    sd = back.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k  # bit-exact weights, zeros included
    ids = torch.randint(0, 256, (1, 20))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, back(ids).logits)
    with pytest.raises(PrunekitError, match="not empty"):
        save_model(model, Tok(), out)
