"""MRP — Maximum Redundancy Pruning (Gao et al., arXiv:2503.18377; docs/methods.md §1).

Greedy allocation: start every block at a uniform sparsity ``s0`` and repeatedly add ``delta``
sparsity to the ``k`` block(s) with the highest *non-outlier ratio* (NOR, the paper's redundancy
level) until the parameter-weighted budget is met exactly (the last step is partial).

Readings of the non-outlier ratio (the paper body was not reachable; every item is [I] in the
spec and an option ``reading``):

- ``current`` (default; docs/methods.md §1 revision 2): start from the real sparse model pruned
  uniformly at ``s0`` (default S − 0.1) and read OWL's own outlier test on the CURRENT sparse
  block: ``tau_l = m · mean(A_l)`` with the mean over ALL entries of the block, pruned weights
  scoring 0; ``NOR_l = #{entries with A <= tau_l} / n_l`` (pruned entries count as non-outliers).
  Pruning lowers the block mean, so survivors near the tail become outliers and NOR falls: the
  loop converges without a λ. At s = 0 it is 1 − OWL's outlier ratio. Caveat (measured): a block
  whose scores have a far tail keeps a nearly constant ratio while pruned and can be pushed to the
  cap; larger m softens this (default m = 7, chosen on held-out NLL).
- ``frozen``: ``tau_l`` frozen at the dense mean; ``NOR_l = #{surviving with A <= tau_l} /
  #{surviving}`` (``denominator="surviving"``) or ``/ n_l`` (``"dense"``).
- ``recomputed``: ``tau_l`` = m · mean over the surviving weights (not monotone).

Score ``A`` of the solver that will prune (option ``score``, principle 2): Wanda ``|W|·||X_j||``,
magnitude ``|W|``, SparseGPT ``W²/[H⁻¹]_jj²``, from the dense calibration statistics. With Wanda's
dense statistics the surviving scores do not change as other weights are pruned, so the loop is
exact and incremental without a model pass; ``refresh=K`` re-collects the statistics on the
partially pruned model every K steps (and once at the start for ``current``).

Simulated pruning order (what "adding delta to block l" removes) follows the solver's comparison
group: Wanda removes the ``round(d_in·s)`` lowest scores of every row, magnitude the ``round(numel·s)``
lowest of every matrix, SparseGPT the ``round(rows·width·s)`` lowest of every ``blocksize``-column
block over all rows. Simplifications: the simulation ranks by *dense* scores, whereas the real
pruning pass is sequential (upstream blocks pruned) and SparseGPT additionally updates the
remaining weights; ``refresh=K`` re-measures the scores on the partially pruned model every K
steps to close that gap.

Incremental cost. With the frozen threshold, the weights of a group sorted ascending are
non-outliers first, so a group with ``c`` non-outliers that lost its ``k`` lowest keeps
``max(c-k, 0)`` of them. Per block we cache the sorted per-group counts ``c`` and their suffix sums
("prefix counts"); the NOR of a block at any sparsity is then one ``searchsorted`` per group size,
and each greedy step recomputes only the blocks it changed. Readings ``recomputed`` and ``current``
keep each group's sorted scores (fp32) and their cumulative sums
(fp64) — about three fp32 copies of the block weights (≈1.2 GB for SmolLM2-135M) — because the
threshold moves with the mean; for ``current`` a group with ``c`` scores ≤ tau that lost its ``k``
lowest keeps ``n_g − max(c, k)`` outliers, and tau = m · (Σ A − removed prefix sum) / n_l.
The ``current`` table does not depend on m and is memoised once per Statistics.

What the ``frozen`` reading converges to. With the frozen threshold and the surviving denominator, while a
block still holds all its outliers (fraction ``o_l`` of its dense weights)
``NOR_l = 1 - o_l / (1 - s_l)``: equal NOR means each block's density is proportional to its dense
outlier fraction — the statistic OWL reads, but without OWL's ±λ band, so the spread can be wide.
``s0 = S - band`` with ``s_cap = S + band`` confines MRP to an OWL-like band; with
``denominator="dense"`` ``NOR_l ≈ 1 - s_l - o_l`` and MRP only tilts the uniform plan by ``o_l``.
"""
from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from prunekit.allocation.plan import SparsityPlan
from prunekit.allocation.registry import register
from prunekit.core.engine import sequential
from prunekit.core.snapshot import weight_snapshot
from prunekit.errors import PrunekitError
from prunekit.vocabulary import Metric
from prunekit.solvers import scores
from prunekit.solvers.masks import prune_count
from prunekit.solvers.prune import COLLECT, prune_block
from prunekit.solvers.sparsegpt import hessian_inverse_cholesky
from prunekit.utils import tqdm

# The readings of the non-outlier ratio, one vocabulary for the option, the tables and the
# experiments: "current" (default) OWL's own outlier test on the CURRENT sparse block; "frozen" /
# "recomputed" the two earlier readings (tau frozen at the dense mean / recomputed over the
# surviving weights, NOR over the surviving or the dense count).
READINGS = ("current", "frozen", "recomputed")
S0_GAP = 0.1  # [I] reading "current" starts from a real sparse model pruned uniformly at S - 0.1


# ----------------------------------------------------------------------------- comparison groups

def comparison_groups(A: torch.Tensor, metric: str, blocksize: int = 128) -> list[torch.Tensor]:
    """Split one matrix's scores (d_out, d_in) into the solver's comparison groups, returned as
    2-D tensors (num_groups, group_size) with equal-size groups stacked."""
    if metric == "wanda":
        return [A]
    if metric == "magnitude":
        return [A.reshape(1, -1)]
    rows, cols = A.shape  # sparsegpt: every blocksize-column block over all rows
    nb = cols // blocksize
    out = []
    if nb:
        out.append(A[:, : nb * blocksize].reshape(rows, nb, blocksize).permute(1, 0, 2).reshape(nb, -1))
    if cols % blocksize:
        out.append(A[:, nb * blocksize:].reshape(1, -1))
    return out


@dataclass
class _Family:
    """All comparison groups of one block that have the same size ``n``."""
    n: int
    counts: np.ndarray            # non-outlier count per group under the frozen tau, sorted ascending
    suffix: np.ndarray            # suffix[i] = counts[i:].sum(); len G+1
    sorted: torch.Tensor | None = None  # (G, n) scores ascending           (current / recomputed)
    csum: torch.Tensor | None = None    # (G, n+1) float64 cumulative sums   (current / recomputed)

    @property
    def groups(self) -> int:
        return len(self.counts)


class BlockTable:
    """Cached per-block structure answering "NOR of this block at sparsity s" in O(#group sizes)."""

    def __init__(self, scores: dict[str, torch.Tensor], metric: str, m: float, reading: str = "frozen",
                 blocksize: int = 128, tau_scores: dict[str, torch.Tensor] | None = None):
        self.m, self.reading = float(m), reading
        ref = tau_scores if tau_scores is not None else scores
        tot = sum(float(a.double().sum()) for a in ref.values())
        self.n = sum(a.numel() for a in ref.values())
        self.tau = self.m * tot / self.n  # OWL: M · mean of the block's pooled scores
        self.total = sum(float(a.double().sum()) for a in scores.values())
        by_size: dict[int, list[torch.Tensor]] = {}
        for a in scores.values():
            for g in comparison_groups(a.float(), metric, blocksize):
                by_size.setdefault(g.shape[1], []).append(g)
        self.families = []
        self.size = sum(a.numel() for a in scores.values())
        for n, gs in sorted(by_size.items()):
            G = torch.cat(gs, 0)
            counts = np.sort((G <= self.tau).sum(1).cpu().numpy().astype(np.int64))
            suffix = np.concatenate([np.cumsum(counts[::-1])[::-1], [0]]).astype(np.int64)
            fam = _Family(n, counts, suffix)
            if reading != "frozen":
                fam.sorted = torch.sort(G.cpu(), dim=1)[0]
                fam.csum = torch.nn.functional.pad(fam.sorted.double().cumsum(1), (1, 0))
            self.families.append(fam)

    def with_m(self, m: float) -> "BlockTable":
        """A shallow copy reading the same sorted scores with multiplier ``m`` (reading "current"
        only: its counts are computed per query, so nothing else depends on m)."""
        import copy
        t = copy.copy(self)
        t.m = float(m)
        t.tau = t.m * (self.tau / self.m) if self.m else 0.0
        return t

    def owl_ratio(self, s: float) -> float:
        """Reading "current": OWL's outlier test on the block pruned at ``s`` (the ``prune_count(n_g, s)``
        lowest of every group removed, removed entries scoring 0). ``tau = m · (Σ surviving A)/n``
        (mean over ALL n entries, zeros included); survivors above tau are outliers; the ratio is
        over all n entries, pruned ones counting as non-outliers. A group with ``c`` scores ≤ tau
        that lost its ``k`` lowest keeps ``n_g − max(c, k)`` outliers."""
        ks, removed = self._removed(s)
        tau = self.m * (self.total - removed) / self.size
        out = 0.0
        for f, k in zip(self.families, ks):
            c = torch.searchsorted(f.sorted, torch.full((f.groups, 1), tau, dtype=f.sorted.dtype), right=True)
            out += float((f.n - c.squeeze(1).clamp_min(k)).sum())
        return 1.0 - out / self.size

    def _removed(self, s: float) -> tuple[list[int], float]:
        """Per family the solvers' count k = prune_count(n_g, s), and the summed scores it removes."""
        ks = [prune_count(f.n, s) for f in self.families]
        return ks, float(sum(f.csum[:, k].sum() for f, k in zip(self.families, ks)))

    def counts(self, s: float) -> tuple[float, float]:
        """(surviving non-outliers, surviving weights) after removing ``prune_count(n_g, s)`` lowest of
        every group (readings "frozen" / "recomputed")."""
        non = surv = 0.0
        if self.reading == "frozen":
            for f in self.families:
                k = prune_count(f.n, s)  # the solvers' count
                i = int(np.searchsorted(f.counts, k, side="right"))  # groups with c > k keep c-k
                non += float(f.suffix[i] - k * (f.groups - i))
                surv += f.groups * (f.n - k)
            return non, surv
        ks, removed = self._removed(s)
        surv = float(sum(f.groups * (f.n - k) for f, k in zip(self.families, ks)))
        tau = self.m * (self.total - removed) / surv if surv > 0 else 0.0
        for f, k in zip(self.families, ks):
            c = torch.searchsorted(f.sorted, torch.full((f.groups, 1), tau, dtype=f.sorted.dtype), right=True)
            non += float((c.squeeze(1) - k).clamp_min(0).sum())
        return non, surv

    def nor(self, s: float, denominator: str = "surviving") -> float:
        if self.reading == "current":  # the denominator is fixed by OWL's test (all n entries)
            return self.owl_ratio(s)
        non, surv = self.counts(s)
        den = surv if denominator == "surviving" else self.n
        return non / den if den > 0 else 0.0


# ----------------------------------------------------------------------------- tables from statistics

_TABLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def build_tables(stats, metric: str = "wanda", m: float = 5.0, reading: str = "frozen",
                 blocksize: int = 128) -> list[BlockTable]:
    """One ``BlockTable`` per block from the dense scores in ``stats`` (``stats.model`` must hold
    the dense weights) under ``reading`` (``READINGS``). Frozen-threshold tables are memoised per
    Statistics object."""
    if reading == "current":  # sorted scores do not depend on m: keep one entry per Statistics, re-m'd copies
        key = (stats.fingerprint, metric, "current", blocksize)
        memo = _TABLES.setdefault(stats, {})
        if key not in memo:
            for old in [k for k in memo if len(k) == 4]:  # ~3 fp32 copies of the weights: keep only one
                del memo[old]
            memo[key] = [BlockTable(stats.scores(i, metric), metric, m, reading, blocksize)
                         for i in range(stats.num_blocks)]
        return [t.with_m(m) for t in memo[key]]
    key = (stats.fingerprint, metric, float(m), reading, blocksize)
    memo = _TABLES.setdefault(stats, {}) if reading == "frozen" else {}
    if key not in memo:
        memo[key] = [BlockTable(stats.scores(i, metric), metric, m, reading, blocksize)
                     for i in range(stats.num_blocks)]
    return memo[key]


def redundancy_levels(stats, per_block, metric: str = "wanda", m: float = 5.0, reading: str = "frozen",
                      denominator: str = "surviving", blocksize: int = 128) -> np.ndarray:
    """Simulated NOR of every block when block l is pruned at ``per_block[l]`` (dense scores,
    solver-order removal; no weights touched)."""
    tables = build_tables(stats, metric, m, reading, blocksize)
    s = np.broadcast_to(np.asarray(per_block, dtype=float), (len(tables),))
    return np.array([t.nor(float(x), denominator) for t, x in zip(tables, s)])


# ----------------------------------------------------------------------------- greedy loop

def greedy(tables: list[BlockTable], block_sizes: np.ndarray, target: float, *, delta: float = 0.01,
           k: int = 1, s0: float = 0.0, s_cap: float = 0.95, denominator: str = "surviving",
           refresh: int = 0, refresher=None, refresh_start: bool = False, on_step=None,
           progress: bool = False) -> dict:
    """MRP's iteration. ``refresher(s) -> tables`` is called every ``refresh`` steps (and once at
    the start when ``refresh_start``: the statistics of the real model pruned uniformly at s0);
    ``on_step(step, s, nor, tables)`` observes every state (tests). Returns s, nor, steps, ..."""
    sizes = np.asarray(block_sizes, dtype=float)
    L = len(tables)
    total = sizes.sum()
    budget = target * total
    s = np.full(L, float(s0))
    steps = np.zeros(L, dtype=np.int64)
    n, refreshes = 0, 0
    if refresh and refresher is not None and refresh_start and s0 > 0:
        tables = refresher(s.copy())
        refreshes += 1
    nor = np.array([t.nor(s0, denominator) for t in tables])
    nor_initial = nor.copy()
    idx = np.arange(L)
    est = int(np.ceil(max(target - s0, 0) * L / (delta * k))) + 1
    bar = tqdm(total=est, desc="mrp", disable=not progress, leave=False)
    while (s * sizes).sum() < budget - 1e-12 * total:
        eligible = s < s_cap - 1e-12
        if not eligible.any():
            raise PrunekitError(f"MRP cannot reach sparsity {target} with every block capped at {s_cap}; raise s_cap")
        order = np.lexsort((idx, -nor))  # highest NOR first, ties -> lowest block index
        chosen = order[eligible[order]][:k]
        new = s.copy()
        new[chosen] = np.minimum(np.round(s0 + (steps[chosen] + 1) * delta, 12), s_cap)
        added = ((new - s) * sizes).sum()
        left = budget - (s * sizes).sum()
        if added > left:  # final partial step lands exactly on the budget
            new = s + (new - s) * (left / added)
        else:
            steps[chosen] += 1
        s = new
        for l in chosen:
            nor[l] = tables[l].nor(float(s[l]), denominator)
        n += 1
        bar.update(1)
        if refresh and refresher is not None and n % refresh == 0 and (s * sizes).sum() < budget - 1e-12 * total:
            tables = refresher(s.copy())
            nor = np.array([t.nor(float(x), denominator) for t, x in zip(tables, s)])
            refreshes += 1
        if on_step is not None:
            on_step(n, s.copy(), nor.copy(), tables)
    bar.close()
    return {"s": s, "nor": nor, "nor_initial": nor_initial, "steps": n, "refreshes": refreshes,
            "increments": steps, "tables": tables}


# ----------------------------------------------------------------------------- refresh

@torch.no_grad()
def refresh_tables(stats, snap, per_block: np.ndarray, metric: str, m: float, reading: str,
                   blocksize: int = 128, percdamp: float = 0.01) -> list[BlockTable]:
    """Prune the (restored) model at ``per_block`` with ``metric`` in one sequential pass and rebuild
    every block's table from the scores the solver sees there: block l's statistics come from the
    pruned upstream blocks, its scores from its pruned (SparseGPT: updated) weights, whose removed
    entries score 0 and so count as already removed. ``tau`` (reading frozen) is m·mean of the dense
    weights scored with the refreshed statistics. Leaves the model pruned; the caller restores.

    Deviation from "prune_model + a fresh Statistics": the solver's own statistics are recorded in
    the same pass (two block runs per block instead of three). ``snap``: the caller's active
    ``weight_snapshot`` (the pass's writes are saved by it; every refresh starts dense)."""
    snap.restore(keep=True)
    lay = stats.layout
    names = list(stats.linear_names)
    values = np.repeat(np.asarray(per_block, dtype=float)[:, None], len(names), axis=1)
    tables: list[BlockTable | None] = [None] * lay.num_blocks

    def on_block(i, block, st):
        prune_block(i, block, st, values, metric, None, names, blocksize, percdamp)
        cur, ref = {}, {}
        for n, lin in lay.linears(i).items():
            Wd = snap.dense_weight(i, n, lin.weight.device)  # saved when the pass pruned block i
            if Wd is None:
                raise PrunekitError(f"MRP refresh: block {i} was modified outside the weight snapshot")
            W, Wd = lin.weight.detach().float(), Wd.float()
            if metric == "wanda":
                norm = st["wanda"][n].norm
                cur[n], ref[n] = scores.wanda_score(W, norm), scores.wanda_score(Wd, norm)
            elif metric == "sparsegpt":
                d = torch.diag(hessian_inverse_cholesky(st["hessian"][n].H, percdamp, copy=False)[0])
                cur[n], ref[n] = scores.sparsegpt_score(W, d), scores.sparsegpt_score(Wd, d)
            else:
                cur[n], ref[n] = scores.magnitude_score(W), scores.magnitude_score(Wd)
        tables[i] = BlockTable(cur, metric, m, reading, blocksize, tau_scores=ref)

    if metric == "magnitude":
        for i in range(lay.num_blocks):
            with snap.modify(i) as block:  # a declared write: the snapshot saves block i first
                on_block(i, block, {})
    else:
        sequential(stats.rt, stats.calib.input_ids, collect=COLLECT[metric], on_block=on_block,
                   batch_size=stats.batch_size, desc="mrp refresh", progress=False)
    return tables


# ----------------------------------------------------------------------------- the method

MIN_DELTA = 1e-4  # bounds the loop: at most L·(S − s0)/(k·delta) + 1 ≤ 1e4·L steps


def _check_mrp(options: dict, target: float | None, num_blocks: int | None) -> None:
    """MRP's cross-option domain: s0 ≤ target ≤ s_cap (the loop starts at s0 and must reach the
    budget with every block capped at s_cap)."""
    if target is None:
        return
    s0, cap = options["s0"], options["s_cap"]
    if s0 is not None and s0 > target:
        raise PrunekitError(f"mrp option 's0' must be <= the target sparsity {target}, got {s0}")
    if cap < target:
        raise PrunekitError(f"mrp option 's_cap' must be >= the target sparsity {target}, got {cap}")


@register("mrp", solver_metric="score", solver_scores={"sparsegpt": "wanda"}, reads=("wanda", "hessian"),
          check=_check_mrp,
          bounds={"m": (0.0, None, "(]"), "delta": (MIN_DELTA, 1.0), "k": (1, None), "s0": (0.0, 1.0, "[)"),
                  "s_cap": (0.0, 1.0, "[)"), "refresh": (0, None), "blocksize": (1, None)})
def mrp(stats, target: float, score: Metric = "wanda",
        reading: Literal["current", "frozen", "recomputed"] = "current", m: float = 7.0,
        delta: float = 0.01, k: int = 1, s0: float | None = None, s_cap: float = 0.95,
        denominator: Literal["surviving", "dense"] = "surviving", refresh: int = 0,
        blocksize: int = 128) -> SparsityPlan:
    """MRP: greedily prune the block with the highest non-outlier ratio until the budget is met.

    ``score``: whose importance score defines outliers and the removal order (wanda|magnitude|
    sparsegpt; set it to the solver that will prune — principle 2); ``reading``: how the
    non-outlier ratio is read — ``current`` (default) OWL's outlier test on the current sparse
    block (tau = m × mean over all entries, pruned ones scoring 0; ratio over all entries),
    ``frozen`` tau frozen at the dense mean, ``recomputed`` tau over the surviving weights (the
    earlier readings; ``denominator`` surviving|dense applies to them only); ``m`` outlier
    multiplier (> 0); ``delta`` sparsity added per step, in [1e-4, 1] (the lower bound caps the
    loop at 1e4 steps per block); ``k`` blocks per step; ``s0`` start sparsity
    (default: S − 0.1 for ``current``, 0 for the earlier readings; at most S); ``s_cap`` per-block
    cap in [S, 1)
    (allocate's s_min/s_max clip afterwards); ``refresh`` = K re-measures the scores on the
    partially pruned model every K steps (one sequential pruning pass each, plus one at the start
    for ``current``; 0 = off); ``blocksize`` SparseGPT's column block.
    Defaults (reading ``current``, ``m`` = 7) chosen on held-out calibration NLL among the readings
    and M ∈ {3, 5, 7} (``experiments/mrp_selection.py``; measured cells in docs/results.md).
    Options: ``score`` the importance score that defines outliers and the removal order;
    ``reading`` how the non-outlier ratio is read (current, frozen or recomputed, above); ``m`` the
    outlier multiplier M; ``delta`` sparsity added per step, at least 1e-4; ``k`` blocks pruned per
    step; ``s0`` start sparsity of every block (default: S − 0.1 for current, else 0); ``s_cap``
    per-block sparsity cap; ``denominator`` of the earlier readings' ratio, surviving or all
    weights; ``refresh`` re-measure the scores every K steps on the partially pruned model (0 =
    off); ``blocksize`` SparseGPT's column block in refreshes."""
    metric = score
    if s0 is None:
        s0 = max(round(target - S0_GAP, 12), 0.0) if reading == "current" else 0.0
    if metric != "magnitude" and stats.calib is None:
        raise PrunekitError(f"MRP with score '{metric}' needs calibration data; pass calib= to Statistics")
    tables = build_tables(stats, metric, m, reading, blocksize)
    block_sizes = np.asarray(stats.sizes, dtype=float).sum(1)
    # the model is pruned during refreshes; the one weight snapshot brings the dense weights back
    with (weight_snapshot(stats.rt) if refresh else contextlib.nullcontext()) as snap:
        refresher = None
        if refresh:
            def refresher(s):
                return refresh_tables(stats, snap, s, metric, m, reading, blocksize)
        out = greedy(tables, block_sizes, target, delta=delta, k=int(k), s0=s0, s_cap=s_cap,
                     denominator=denominator, refresh=int(refresh), refresher=refresher,
                     refresh_start=reading == "current", progress=getattr(stats, "progress", False))
    vals = np.repeat(out["s"][:, None], np.asarray(stats.sizes).shape[1], axis=1)
    options = dict(score=metric, reading=reading, m=m, delta=delta, k=int(k), s0=s0, s_cap=s_cap,
                   denominator=denominator, refresh=int(refresh), blocksize=blocksize)
    extras = {"nor_initial": out["nor_initial"], "nor_final": out["nor"], "steps": out["steps"],
              "refreshes": out["refreshes"], "tau": np.array([t.tau for t in out["tables"]])}
    return SparsityPlan(vals, np.asarray(stats.sizes, dtype=float), target, "mrp", options,
                        list(stats.linear_names), extras)
