"""Calibration statistics do not depend on the batch size, on every supported family.

The sequential engine is run on the same 8 calibration windows with batch sizes 1, 4, 8 and 3: every
linear's Wanda accumulator (``scaler_row``, its sequence count ``nseq``) and Hessian ``H`` must
agree, and so must the ``Statistics`` built on them (Wanda norms, diag of H⁻¹'s factor) and an OWL
plan. The reference values are computed independently from the calibration windows: ``nseq`` must
be the number of windows and ``scaler_row`` / ``H`` must equal the column sums of squares / XᵀX of
each linear's inputs captured by plain forward hooks on a full-batch dense forward.
(OPT's fc1/fc2 see a flattened 2-D (tokens, d) input; counting one sequence per 2-D call made
their statistics scale with the number of batches.)
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FAMILIES, tiny_calib, tiny_model

from prunekit.allocation import allocate
from prunekit.core.engine import sequential
from prunekit.core.runtime import Runtime
from prunekit.scoring.statistics import Statistics

pytestmark = pytest.mark.usefixtures("one_thread")

BATCH_SIZES = (1, 4, 8, 3)  # 3: an uneven last batch (8 = 3 + 3 + 2)
N_WINDOWS, SEQLEN = 8, 16


def close(got: torch.Tensor, want: torch.Tensor, what: str, tol: float = 1e-5) -> None:
    """Equal up to fp32 summation-order noise: |got − want| <= tol·(|want| + max|want|·1e-1)
    elementwise (the forward itself runs in other batch shapes, so the activations differ in the
    last bits). A wrong sequence count is off by a factor >= 2."""
    err = (got.double() - want.double()).abs()
    bound = tol * (want.double().abs() + 0.1 * want.double().abs().max())
    assert bool((err <= bound).all()), f"{what}: max error {float(err.max()):.3g}, max |value| " \
                                       f"{float(want.abs().max()):.3g}"


def engine_stats(kind: str, ids: torch.Tensor, batch_size: int) -> dict:
    """(block, linear) -> (scaler_row, nseq, H) from one dense sequential pass."""
    rt = Runtime.of(tiny_model(kind))
    out = {}

    def on_block(i, block, stats):
        for n, w in stats["wanda"].items():
            out[(i, n)] = (w.scaler_row.clone(), w.nseq, stats["hessian"][n].H.clone())

    sequential(rt, ids, collect=("wanda", "hessian"), on_block=on_block, modifies=False,
               batch_size=batch_size, progress=False)
    return out


def hooked_inputs(kind: str, ids: torch.Tensor) -> dict:
    """(block, linear) -> that linear's inputs as (tokens, d) float64, from one plain dense forward
    of the whole batch (no prunekit engine involved)."""
    model = tiny_model(kind)
    rt = Runtime.of(model)
    xs, handles = {}, []
    for i in range(rt.layout.num_blocks):
        for n, m in rt.layout.linears(i).items():
            handles.append(m.register_forward_hook(
                lambda mod, inp, out, key=(i, n): xs.__setitem__(key, inp[0].detach().reshape(-1, mod.in_features)
                                                                 .double())))
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    return xs


@pytest.mark.parametrize("kind", FAMILIES)
def test_wanda_norms_and_hessians_independent_of_batch_size(kind):
    ids = tiny_calib(N_WINDOWS, SEQLEN).input_ids
    runs = {b: engine_stats(kind, ids, b) for b in BATCH_SIZES}
    xs = hooked_inputs(kind, ids)
    assert set(runs[1]) == set(xs)
    for key, x in xs.items():
        want_row = (x.pow(2).sum(0) / N_WINDOWS).float()       # (1/N_seq) Σ x², N_seq = windows
        want_H = (2.0 / N_WINDOWS * x.t() @ x).float()          # (2/N_seq) XᵀX
        for b, st in runs.items():
            row, nseq, H = st[key]
            assert nseq == N_WINDOWS, f"{kind} {key} batch {b}: nseq {nseq}"
            close(row, want_row, f"{kind} {key} batch {b}: scaler_row")
            close(H, want_H, f"{kind} {key} batch {b}: H")
            if b != 1:  # and the batch sizes against each other
                close(row, runs[1][key][0], f"{kind} {key} batch {b} vs 1: scaler_row")
                close(H, runs[1][key][2], f"{kind} {key} batch {b} vs 1: H")


@pytest.mark.parametrize("kind", FAMILIES)
def test_statistics_and_owl_plan_independent_of_batch_size(kind):
    calib = tiny_calib(N_WINDOWS, SEQLEN)
    out = {}
    for b in BATCH_SIZES:
        st = Statistics(Runtime.of(tiny_model(kind)), calib, cache=False, progress=False, batch_size=b)
        out[b] = (st.wanda_norms(), st.hinv_diag(), allocate("owl", st, 0.5))
    norms, hinv, plan = out[1]
    assert plan.values.std() > 0  # a non-trivial plan: OWL really read the statistics
    for b in BATCH_SIZES[1:]:
        n_b, h_b, p_b = out[b]
        for i in range(len(norms)):
            for name in norms[i]:
                close(n_b[i][name], norms[i][name], f"{kind} batch {b} block {i} {name}: Wanda norm")
                # diag of the inverse's factor amplifies fp32 summation-order noise (measured 3e-5)
                close(h_b[i][name], hinv[i][name], f"{kind} batch {b} block {i} {name}: hinv diag", tol=1e-4)
        np.testing.assert_allclose(p_b.values, plan.values, rtol=0, atol=1e-12, err_msg=f"{kind} batch {b}")
