"""N:M keeps the largest M−N of every M (``--nm N:M`` = N weights PRUNED of every M consecutive
inputs of a row; ``masks.parse_nm``), by the solver's own score: magnitude |W|, Wanda |W|·‖X_j‖.

Checked by brute force — for every entry, count how many entries of its group score strictly
higher; it survives iff fewer than M−N do — on tie-free weights, both for the mask functions and
end to end through ``prune_model`` on every tiny family (the weights and Wanda norms each block is
pruned with are recorded by a pass-through spy on ``prune_block``)."""
from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, tiny_calib, tiny_model

import prunekit.solvers.prune as pr
from prunekit.core.runtime import Runtime
from prunekit.solvers.masks import magnitude_mask, parse_nm, wanda_mask

pytestmark = pytest.mark.usefixtures("one_thread")

PATTERNS = ["2:4", "1:4", "3:4", "4:8"]


def keep_largest(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Brute force: True where an entry is among the m − n largest of its group of m consecutive
    columns in its row (tie-free scores assumed, and asserted)."""
    rows, cols = score.shape
    g = score.double().reshape(rows, cols // m, m)
    higher = (g.unsqueeze(-2) > g.unsqueeze(-1)).sum(-1)    # [r, k, a] = #{b : g[b] > g[a]}
    equal = (g.unsqueeze(-2) == g.unsqueeze(-1)).sum(-1)
    assert bool((equal == 1).all()), "scores have ties: the test needs tie-free groups"
    return (higher < m - n).reshape(rows, cols)


def tie_free(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Weights with pairwise distinct magnitudes (a random permutation of 1..rows·cols, random signs)."""
    g = torch.Generator().manual_seed(seed)
    mag = (torch.randperm(rows * cols, generator=g).float() + 1) / (rows * cols)
    sign = torch.randint(0, 2, (rows * cols,), generator=g).float() * 2 - 1
    return (mag * sign).reshape(rows, cols)


def test_parse_nm_counts_the_pruned():
    assert parse_nm("2:4") == (2, 4) and parse_nm("1:4") == (1, 4) and parse_nm(None) is None
    assert "pruned" in parse_nm.__doc__


@pytest.mark.parametrize("pattern", PATTERNS)
def test_mask_functions_keep_the_largest_scores(pattern):
    n, m = parse_nm(pattern)
    W = tie_free(24, 64, seed=n * 10 + m)
    norm = torch.linspace(0.5, 3.0, 64)[torch.randperm(64, generator=torch.Generator().manual_seed(1))]
    for mask, score in ((magnitude_mask(W, 0.0, (n, m)), W.abs()),
                        (wanda_mask(W, norm, 0.0, (n, m)), W.abs() * norm)):
        keep = keep_largest(score, n, m)
        assert (keep.reshape(24, -1, m).sum(-1) == m - n).all()
        assert torch.equal(~mask, keep)  # mask: True = pruned


def pruned_with_spy(kind: str, metric: str, pattern: str, monkeypatch):
    """Prune a tiny model N:M; return per block the weights and Wanda norms it was pruned with
    (recorded just before ``prune_block``) and the weights after."""
    seen = {}
    real = pr.prune_block

    def spy(i, block, stats, *a, **kw):
        lin = dict(block.named_modules())
        seen[i] = {n: (lin[n].weight.detach().clone(),
                       stats["wanda"][n].norm.clone() if "wanda" in stats else None)
                   for n in rt.layout.linear_names}
        return real(i, block, stats, *a, **kw)

    monkeypatch.setattr(pr, "prune_block", spy)
    rt = Runtime.of(tiny_model(kind, layers=3, seed=4))
    pr.prune_model(rt, tiny_calib(4, 16).input_ids, 0.5, metric, nm=pattern, batch_size=2, progress=False)
    after = {}
    for i in range(rt.layout.num_blocks):
        with rt.onload(i):
            after[i] = {n: m.weight.detach().clone() for n, m in rt.layout.linears(i).items()}
    return seen, after


@pytest.mark.parametrize("kind", FAMILIES)
@pytest.mark.parametrize("metric", ["magnitude", "wanda"])
def test_prune_model_nm_keeps_the_largest_scores(kind, metric, monkeypatch):
    for pattern in ("2:4", "1:4"):
        n, m = parse_nm(pattern)
        seen, after = pruned_with_spy(kind, metric, pattern, monkeypatch)
        assert sorted(seen) == sorted(after) and seen
        for i, lins in seen.items():
            for name, (W, norm) in lins.items():
                score = W.abs().float() if metric == "magnitude" else W.abs().float() * norm.reshape(1, -1)
                keep = keep_largest(score, n, m)
                got = after[i][name]
                assert torch.equal(got != 0, keep), f"{kind} {metric} {pattern} block {i} {name}"
                assert torch.equal(got[keep], W[keep])  # survivors untouched
