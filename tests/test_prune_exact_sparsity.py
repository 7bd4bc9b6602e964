"""Exact sparsity: every comparison group prunes round(n·s) weights, so the realised global sparsity
is within half a weight per group of the plan (no float truncation: 0.49999999·64 prunes 32, not 31).
The expected zero counts are computed independently from the group shapes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import tiny_calib, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def expected_zeros(W_shape, s, metric, blocksize=128):
    rows, cols = W_shape
    r = lambda n: math.floor(n * s + 0.5)  # noqa: E731 — nearest integer, ties up
    if metric == "magnitude":          # one group: the whole matrix
        return r(rows * cols), 1
    if metric == "wanda":              # one group per output row
        return rows * r(cols), rows
    widths = [min(blocksize, cols - i) for i in range(0, cols, blocksize)]  # SparseGPT column blocks
    return sum(r(rows * w) for w in widths), len(widths)


@pytest.mark.parametrize("metric", ["magnitude", "wanda", "sparsegpt"])
def test_zero_count_per_group_is_round_n_s(metric):
    from prunekit.core.architectures import layout
    from prunekit.solvers.prune import prune_model
    model = tiny_model("llama")
    lay = layout(model)
    rng = np.random.default_rng(0)
    # plan values just below round fractions, as a budget fit produces them (0.5 - 1e-9 etc.)
    plan = rng.choice([0.5, 0.25, 0.75, 0.625], size=(lay.num_blocks, len(lay.linear_names))) - 1e-9
    plan += rng.choice([0.0, 2e-9], size=plan.shape)  # some just above
    shapes = {(i, n): m.weight.shape for i in range(lay.num_blocks) for n, m in lay.linears(i).items()}
    prune_model(model, tiny_calib().input_ids, plan, metric, progress=False)
    zeros = groups = total = 0
    planned = 0.0
    for i in range(lay.num_blocks):
        for k, (n, m) in enumerate(lay.linears(i).items()):
            want, g = expected_zeros(shapes[(i, n)], plan[i, k], metric)
            got = int((m.weight == 0).sum())
            assert got == want, (i, n, got, want)
            zeros, groups, total = zeros + got, groups + g, total + m.weight.numel()
            planned += plan[i, k] * m.weight.numel()
    assert abs(zeros - planned) <= 0.5 * groups + 1e-6  # within half a weight per group


def test_prune_count_rounds_not_truncates():
    from prunekit.solvers.masks import _global_mask, _row_mask, prune_count
    assert prune_count(64, 0.5 - 1e-12) == 32 and int(64 * (0.5 - 1e-12)) == 31
    assert prune_count(576 * 1536, 0.75) == 576 * 1536 * 3 // 4
    assert prune_count(10, 0.0) == 0 and prune_count(10, 0.999) == 10
    score = torch.rand(8, 64, generator=torch.Generator().manual_seed(0))
    assert int(_row_mask(score, 0.5 - 1e-12).sum()) == 8 * 32
    assert int(_global_mask(score, 0.75 - 1e-12).sum()) == 384


@pytest.mark.parametrize("bs", [0, -2])
def test_library_rejects_nonpositive_batch_size(bs):
    """range(0, n, -2) is empty: no calibration data would be captured and SparseGPT would zero
    every weight from an all-zero Hessian. The engine refuses instead."""
    from prunekit.errors import PrunekitError
    from prunekit.solvers.prune import prune_model
    model = tiny_model("llama")
    with pytest.raises(PrunekitError, match="batch_size"):
        prune_model(model, tiny_calib().input_ids, 0.5, "sparsegpt", batch_size=bs, progress=False)
    assert all(int((p == 0).sum()) == 0 for p in model.parameters() if p.dim() == 2)
