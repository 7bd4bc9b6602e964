"""Every path a user can combine works, and is proven: the combination matrix.

Factors: every registered allocation (live registry) × solver {magnitude, wanda, sparsegpt} ×
offload {none, cpu, disk} × tiny {LLaMA, Qwen2, Gemma3, OPT} × {fp32, bf16}.

A *cell* fixes (allocation, solver, family, dtype) and runs the whole path — ``Statistics`` →
``allocate`` → ``prune_model`` — once under EACH offload mode (offload is varied inside every cell,
so every pair involving the offload factor is covered by every cell). Per cell:

* the allocation completes (cheapest valid options for the methods that run experiments of their
  own) with a budget-exact plan inside the bounds, and leaves the weights untouched;
* the realised sparsity matches the plan group by group: in every (block, linear) matrix, every
  comparison group of the solver (magnitude: the matrix; Wanda: each row; SparseGPT: each
  128-column block of the matrix) holds a nearest integer to ``numel·s`` zeros, counted from the
  weights (independently of prunekit's rounding rule). Ties (frequent in bf16) do not change the
  count: exactly that many are pruned. The one allowed excess: SparseGPT zeroes the columns of
  dead inputs (H_jj = 0) beyond the budget (none occur on these models);
* the three offload modes give the same plan and bit-identical ``weight == 0`` masks.

By default a pairwise-covering subset of the cells runs (generated below by a small deterministic
greedy all-pairs algorithm; ``test_pairwise_subset_covers_every_pair`` re-checks the coverage by
brute force). The full product is marked ``matrix`` and runs only with ``PRUNEKIT_MATRIX=1``.
"""
from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import torch
from conftest import FAMILIES, block_weights, tiny_calib, tiny_model

from prunekit.allocation import allocate, specs, with_solver_metric
from prunekit.core.runtime import Runtime
from prunekit.scoring.statistics import Statistics
from prunekit.solvers.prune import prune_model

pytestmark = pytest.mark.usefixtures("one_thread")

full_matrix = [pytest.mark.matrix, pytest.mark.skipif(os.environ.get("PRUNEKIT_MATRIX") != "1",
                                          reason="the full combination product runs with PRUNEKIT_MATRIX=1")]

ALLOCATIONS = sorted(specs())
SOLVERS = ["magnitude", "wanda", "sparsegpt"]
OFFLOADS = ["none", "cpu", "disk"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TARGET = 0.6
SPARSEGPT_BLOCK = 128  # prune_model's default SparseGPT column block (its comparison group)


# ----------------------------------------------------------------------------- the pairwise subset

def all_pairs(factors: list[list]) -> list[tuple]:
    """A deterministic pairwise-covering subset of the product of ``factors``: every pair of values
    of any two factors appears in at least one returned row. Greedy: seed a row with the smallest
    uncovered pair, fill the other factors (largest first) with the value covering the most
    uncovered pairs with the factors already set (ties: the first value); repeat until covered."""
    k = len(factors)

    def pair(f, v, g, w):  # canonical (factor, value index) pair, the lower factor first
        return (f, v, g, w) if f < g else (g, w, f, v)

    uncovered = {(f, v, g, w) for f, g in itertools.combinations(range(k), 2)
                 for v in range(len(factors[f])) for w in range(len(factors[g]))}
    order = sorted(range(k), key=lambda f: -len(factors[f]))
    rows = []
    while uncovered:
        f, v, g, w = min(uncovered)
        row = {f: v, g: w}
        for h in order:
            if h in row:
                continue
            gain = [sum(pair(h, x, o, row[o]) in uncovered for o in row) for x in range(len(factors[h]))]
            row[h] = gain.index(max(gain))
        idx = tuple(row[h] for h in range(k))
        uncovered -= {(a, idx[a], b, idx[b]) for a, b in itertools.combinations(range(k), 2)}
        rows.append(tuple(factors[h][idx[h]] for h in range(k)))
    return rows


def missing_pairs(rows, factors) -> list:
    """Brute force: every (factor i = a, factor j = b) pair that no row holds."""
    return [(i, a, j, b) for i, j in itertools.combinations(range(len(factors)), 2)
            for a in factors[i] for b in factors[j]
            if not any(r[i] == a and r[j] == b for r in rows)]


CELL_FACTORS = [ALLOCATIONS, SOLVERS, FAMILIES, list(DTYPES)]   # offload varies inside each cell
PAIRWISE = all_pairs(CELL_FACTORS)
FULL = list(itertools.product(*CELL_FACTORS))


def test_pairwise_subset_covers_every_pair():
    # every cell runs all three offload modes: expand to (allocation, solver, offload, family, dtype)
    five = [ALLOCATIONS, SOLVERS, OFFLOADS, FAMILIES, list(DTYPES)]
    expanded = [(a, s, o, f, d) for a, s, f, d in PAIRWISE for o in OFFLOADS]
    assert missing_pairs(expanded, five) == []
    assert missing_pairs(PAIRWISE, CELL_FACTORS) == []
    assert len(set(PAIRWISE)) == len(PAIRWISE) and set(PAIRWISE) <= set(FULL)
    assert len(PAIRWISE) < len(FULL) / 3
    assert all_pairs(CELL_FACTORS) == PAIRWISE  # deterministic: the same cells on every run


def test_all_pairs_on_other_shapes_and_the_checker_can_fail():
    for shape in [(2, 2), (3, 3, 3, 3), (7, 3, 3, 4, 2), (5, 1, 4), (2, 9, 2, 2, 3)]:
        factors = [[f"f{i}v{j}" for j in range(n)] for i, n in enumerate(shape)]
        rows = all_pairs(factors)
        assert missing_pairs(rows, factors) == [], shape
        assert len(rows) <= int(np.prod(shape))
    # the brute-force checker sees a single missing pair: the full product minus the rows holding it
    a, f = ALLOCATIONS[-1], FAMILIES[1]
    without = [r for r in FULL if not (r[0] == a and r[2] == f)]
    assert missing_pairs(without, CELL_FACTORS) == [(0, a, 2, f)]


# ----------------------------------------------------------------------------- one cell

def cheap_options(method: str, held: torch.Tensor) -> dict:
    """The cheapest valid options of the methods that run experiments of their own."""
    return {"svnup": {"estimator": "sliding_window", "window": 2, "heldout": held},
            "mrp": {"delta": 0.05},
            "absorption": {"heldout": held, "probe_samples": 2}}.get(method, {})





def run_path(method: str, solver: str, kind: str, dtype: str, mode: str):
    model = tiny_model(kind, layers=4, seed=0).to(DTYPES[dtype])
    rt = Runtime.of(model)
    rt.offload(mode)
    assert rt.offload_mode == mode
    calib, held = tiny_calib(4, 16, seed=0), tiny_calib(2, 16, seed=1).input_ids
    stats = Statistics(rt, calib, cache=False, progress=False, batch_size=2)
    dense = block_weights(rt)
    plan = allocate(method, stats, TARGET, **with_solver_metric(method, cheap_options(method, held), solver))
    after = block_weights(rt)
    assert all(torch.equal(after[k], dense[k]) for k in dense), "the allocation modified the weights"
    rep = prune_model(rt, calib.input_ids, plan, solver, batch_size=2, progress=False)
    return plan, rep, block_weights(rt), rt


def comparison_groups(W: torch.Tensor, solver: str) -> list[torch.Tensor]:
    """The solver's comparison groups of one matrix, as views of W."""
    if solver == "magnitude":
        return [W]
    if solver == "wanda":
        return list(W)
    return [W[:, c:c + SPARSEGPT_BLOCK] for c in range(0, W.shape[1], SPARSEGPT_BLOCK)]


def check_groups(plan, weights: dict, solver: str, linear_names: list[str]) -> None:
    """Every comparison group holds a nearest integer to numel·s zeros (s: the group's planned value)."""
    bad = []
    for (i, name), W in weights.items():
        s = float(plan.values[i, linear_names.index(name)])
        for gi, G in enumerate(comparison_groups(W, solver)):
            n, z = G.numel(), int((G == 0).sum())
            # SparseGPT zeroes the columns of inputs that never fire (H_jj = 0) whatever the plan;
            # such columns score 0 and are pruned first, so they only matter beyond the budget
            dead = G.shape[0] * int((G == 0).all(0).sum()) if solver == "sparsegpt" else 0
            if abs(z - n * s) > 0.5 + 1e-9 * n and not (z == dead > n * s):
                bad.append((i, name, gi, z, n, s))
    assert not bad, f"{len(bad)} groups off their plan, e.g. (block, linear, group, zeros, numel, s) {bad[:3]}"


def check_cell(method: str, solver: str, kind: str, dtype: str) -> None:
    runs = {mode: run_path(method, solver, kind, dtype, mode) for mode in OFFLOADS}
    plan, rep, weights, rt = runs["none"]
    lay = rt.layout
    sizes = np.asarray(lay.sizes(), dtype=float)
    # the allocation: budget-exact and within the bounds
    assert plan.values.shape == sizes.shape
    assert abs(float((plan.values * sizes).sum() / sizes.sum()) - TARGET) < 1e-6
    assert plan.values.min() >= 0.0 and plan.values.max() <= 0.99 + 1e-12
    # realised sparsity, group by group, from the weights
    check_groups(plan, weights, solver, list(lay.linear_names))
    per_block = [sum(int((weights[(i, n)] == 0).sum()) for n in lay.linear_names) /
                 sum(weights[(i, n)].numel() for n in lay.linear_names) for i in range(lay.num_blocks)]
    np.testing.assert_allclose(rep["layer_sparsity"], per_block, rtol=0, atol=1e-12)
    # the three offload modes: same plan, bit-identical masks
    for mode in ("cpu", "disk"):
        p, _, w, _ = runs[mode]
        assert np.array_equal(p.values, plan.values), f"{mode}: plan differs from offload none"
        diff = [k for k in weights if not torch.equal(w[k] == 0, weights[k] == 0)]
        assert not diff, f"{mode}: masks differ from offload none in {diff[:4]}"


def _id(cell):
    return "-".join(cell)


@pytest.mark.parametrize("cell", PAIRWISE, ids=_id)
def test_pairwise_cell(cell):
    check_cell(*cell)


@pytest.mark.parametrize("cell", [pytest.param(c, marks=full_matrix) for c in FULL], ids=_id)
def test_full_matrix_cell(cell):
    check_cell(*cell)
