"""prune_model (prunekit/solvers/prune.py): realised sparsity measured from zeros, per-block plans, bad input."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_calib, tiny_model

from prunekit.errors import PrunekitError
from prunekit.solvers.masks import parse_nm
from prunekit.solvers.prune import measure_sparsity, prune_model


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


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_measure_sparsity_counts_zeros_independently(dtype):
    """Zeros (−0.0 included) counted linear by linear with a Python loop over the values."""
    import torch
    model = tiny_model("llama").to(getattr(torch, dtype))
    g = torch.Generator().manual_seed(3)
    want = []
    with torch.no_grad():
        for block in model.model.layers:
            z = n = 0
            for m in block.modules():
                if isinstance(m, torch.nn.Linear):
                    keep = torch.rand(m.weight.shape, generator=g) < 0.6
                    m.weight.mul_(keep.to(m.weight.dtype))  # 0·(negative) = −0.0 for some weights
                    z += sum(1 for v in m.weight.flatten().tolist() if v == 0.0)
                    n += m.weight.numel()
            want.append(z / n)
    got = measure_sparsity(model)["layer_sparsity"]
    assert got == pytest.approx(want, abs=0)
