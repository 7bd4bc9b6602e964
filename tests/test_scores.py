"""One score module (prunekit/solvers/scores.py): each score equals an explicit-loop computation,
and every consumer goes through it (a patched score changes each consumer's output)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import tiny_calib, tiny_model

from prunekit.solvers import scores
from prunekit.solvers.sparsegpt import hessian_inverse_cholesky

pytestmark = pytest.mark.usefixtures("one_thread")


def _wx(seed=0, rows=5, cols=7, tokens=11):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g), torch.randn(tokens, cols, generator=g)


def test_magnitude_and_wanda_match_loops():
    W, X = _wx()
    rows, cols = W.shape
    norm = [math.sqrt(sum(float(X[t, j]) ** 2 for t in range(X.shape[0]))) for j in range(cols)]
    mag = [[abs(float(W[i, j])) for j in range(cols)] for i in range(rows)]
    wan = [[abs(float(W[i, j])) * norm[j] for j in range(cols)] for i in range(rows)]
    np.testing.assert_allclose(scores.magnitude_score(W).numpy(), mag, rtol=1e-6)
    np.testing.assert_allclose(scores.wanda_score(W, torch.tensor(norm)).numpy(), wan, rtol=1e-6)


def test_sparsegpt_matches_loops_and_the_inverse_hessian_diagonal():
    """w² / [H⁻¹]_jj² with [H⁻¹]_jj the diagonal of the upper Cholesky factor of (H + λI)⁻¹,
    H = (2/N) XᵀX, λ = 1 % of mean(diag H): the factor from numpy in float64, the score by loops."""
    W, X = _wx(1)
    rows, cols = W.shape
    N = X.shape[0]
    H = [[2.0 / N * sum(float(X[t, a]) * float(X[t, b]) for t in range(N)) for b in range(cols)] for a in range(cols)]
    lam = 0.01 * sum(H[j][j] for j in range(cols)) / cols
    Hd = np.array(H) + lam * np.eye(cols)
    d = np.diag(np.linalg.cholesky(np.linalg.inv(Hd)))  # inv = L Lᵀ = UᵀU with U = Lᵀ: same diagonal
    got_d = torch.diag(hessian_inverse_cholesky(torch.tensor(H, dtype=torch.float32))[0]).double().numpy()
    np.testing.assert_allclose(got_d, d, rtol=1e-4)
    want = [[float(W[i, j]) ** 2 / d[j] ** 2 for j in range(cols)] for i in range(rows)]
    np.testing.assert_allclose(scores.sparsegpt_score(W, torch.tensor(d)).numpy(), want, rtol=1e-5)


# ----------------------------------------------------------------------------- no consumer re-implements a score

@pytest.fixture(scope="module")
def env():
    from prunekit.scoring.statistics import Statistics
    model = tiny_model("llama", layers=2, seed=4)
    return Statistics(model, tiny_calib(n=2, seqlen=12), cache=False, progress=False)


def _negated(monkeypatch, name):
    """Patch ``scores.<name>`` to the negated score: the ranking reverses, so every mask, table and
    score computed through the module changes."""
    orig = getattr(scores, name)
    monkeypatch.setattr(scores, name, lambda *a, **k: -orig(*a, **k))


def _consumers(stats, metric):
    """Each consumer's output for ``metric`` (tensors / arrays keyed by consumer)."""
    from prunekit.allocation import mrp
    from prunekit.allocation.svnup.game import LayerGame
    from prunekit.core.snapshot import weight_snapshot
    from prunekit.solvers.masks import magnitude_mask, wanda_mask
    from prunekit.solvers.prune import prune_model
    from prunekit.solvers.sparsegpt import sparsegpt
    model, ids = stats.rt, stats.calib.input_ids
    lay = model.layout
    name = lay.linear_names[0]
    W = lay.linears(0)[name].weight.detach().clone()
    out = {"statistics": stats.scores(0, metric)[name].clone()}
    if metric == "magnitude":
        out["masks"] = magnitude_mask(W, 0.5)
    elif metric == "wanda":
        out["masks"] = wanda_mask(W, stats.wanda_norms()[0][name], 0.5)
    else:
        g = torch.Generator().manual_seed(0)
        X = torch.randn(40, W.shape[1], generator=g)
        out["solver"] = sparsegpt(W, X.t() @ X, 0.5)
    with weight_snapshot(model) as snap:  # MRP's refresh re-scores the pruned model; dense again on exit
        out["mrp_refresh"] = np.array([t.tau for t in mrp.refresh_tables(stats, snap, np.full(2, 0.3), metric,
                                                                         5.0, "frozen")])
    with LayerGame(model, ids, ids, 0.5, metric, progress=False) as game:  # SV-NUP's pruned blocks
        out["svnup_game"] = game(0)
    with weight_snapshot(model):
        prune_model(model, ids, 0.5, metric, progress=False)
        out["prune"] = torch.cat([m.weight.detach().reshape(-1).clone() for m in lay.linears(1).values()])
    return out


@pytest.mark.parametrize("metric,fn", [("magnitude", "magnitude_score"), ("wanda", "wanda_score"),
                                       ("sparsegpt", "sparsegpt_score")])
def test_every_consumer_goes_through_the_score_module(env, monkeypatch, metric, fn):
    before = _consumers(env, metric)
    _negated(monkeypatch, fn)
    after = _consumers(env, metric)
    same = [k for k in before if np.array_equal(np.asarray(before[k]), np.asarray(after[k]))]
    assert not same, f"{metric}: {same} did not change when scores.{fn} changed (a re-implemented score?)"
