"""The sequential block engine (prunekit/core/engine.py, docs/methods.md §0.2): block by block equals the
full forward for every family, per-block kwargs, statistics equal direct computations, later blocks
see the pruned upstream model."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import FAMILIES, tiny_calib, tiny_model

from prunekit.core.engine import capture, sequential
from prunekit.core.architectures import layout


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


def test_block_statistics_are_freed_by_refcounting_alone():
    """Each block's Hessians (0.7 GB fp32 on a 7B shape) must die with the block's step, without
    waiting for Python's cyclic GC: a reference cycle kept every block's Hessians alive until a
    rare full collection, and the 32-block M1 SparseGPT run was OOM-killed at block 10."""
    import gc

    from prunekit.core.engine import Hessian
    from prunekit.solvers.prune import prune_model
    model = tiny_model("llama")
    ids = tiny_calib(n=4, seqlen=16).input_ids
    gc.collect()
    gc.disable()
    try:
        prune_model(model, ids, 0.5, "sparsegpt", progress=False)
        alive = sum(isinstance(o, Hessian) for o in gc.get_objects())
    finally:
        gc.enable()
    assert alive == 0
