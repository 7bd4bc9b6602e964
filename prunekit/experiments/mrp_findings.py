"""Analysis: MRP's three findings (arXiv:2503.18377, docs/methods.md §1) as measurements.

1. ``layer_sensitivity``: layerwise pruning sensitivity (LPS) — the increase of the mean NLL on
   evaluation windows when only block l is pruned at sparsity s — and its coefficient of variation
   across blocks ("LPS is highly non-uniform").
2. ``metric_dependency``: LPS under magnitude / Wanda / SparseGPT, Spearman rank correlations between
   the metrics' LPS vectors and the blocks whose rank moves most ("the metric changes the LPS").
3. ``redundancy_uniformity``: for many allocations at one global sparsity (registered methods plus
   seeded random budget-exact ones), the spread of the blocks' redundancy levels (non-outlier ratios)
   in the *pruned* model against its perplexity, with a bootstrap CI on their Spearman correlation
   ("a more uniform redundancy level goes with a better sparse model").

LPS cost: the dense activations at every block boundary on the evaluation windows are computed once
(one dense walk with the sequential engine) and kept on CPU — L+1 tensors of (tokens × hidden), fine
for small models and a few thousand tokens, too large for 7B × 128 × 2048. Then for each (block, s)
only blocks l..L-1 are re-run from the cached boundary of block l. The pruned block uses the dense
calibration statistics (Wanda norms from ``Statistics``; SparseGPT's Hessians from one dense
sequential pass, with the real OBS weight update), i.e. exactly what ``prune_model`` would do if only
that block had a non-zero sparsity.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
from torch import nn
from prunekit.utils import tqdm

from prunekit.utils import bars_disabled
from prunekit.allocation.plan import fit_budget
from prunekit.allocation.registry import methods as registered_methods
from prunekit.core.engine import Replay, sequential
from prunekit.core.runtime import Runtime
from prunekit.core.snapshot import weight_snapshot
from prunekit.errors import PrunekitError
from prunekit.experiments.correlation import bootstrap_spearman, coefficient_of_variation, spearman  # noqa: F401 (notebook API)
from prunekit.scoring.statistics import Statistics
from prunekit.solvers.prune import METRICS, prune_block, prune_model

# ----------------------------------------------------------------------------- sources

def _resolve(source, calib=None):
    """(runtime, stats, calib, batch_size, session) from a Session, a Statistics, a Runtime or a model."""
    from prunekit.experiments.session import Session
    if isinstance(source, Session):
        source.restore()  # measurements start from the dense model
        return source.runtime, source.stats, source.calib, source.batch_size, source
    if isinstance(source, Statistics):
        return source.rt, source, source.calib, source.batch_size, None
    if isinstance(source, (Runtime, nn.Module)):
        rt = Runtime.of(source)
        return rt, Statistics(rt, calib, progress=False), calib, 8, None
    raise PrunekitError(f"expected a Session, Statistics or model, got {type(source).__name__}")


def heldout_ids(session, nsamples: int = 2, seed: int | None = None) -> torch.Tensor:
    """Calibration-distribution windows disjoint from the session's calibration set (for losses
    that must not be measured on the windows the statistics came from)."""
    from prunekit.core.data import heldout_set
    return heldout_set(session.calib, session.tokenizer, nsamples, seed=seed).input_ids


# ----------------------------------------------------------------------------- dense boundaries

# The replay engine is ``core.engine.Replay``: dense boundaries kept every k blocks where the model's
# memory policy puts activations (all of them on CPU for an in-memory model), recomputed in between.
Boundaries = Replay


@torch.no_grad()
def dense_boundaries(model, ids: torch.Tensor, batch_size: int = 8, checkpoint_every: int | None = None) -> Replay:
    """One dense walk recording the block boundaries of ``ids`` (``Replay``)."""
    return Replay(model, ids, batch_size, checkpoint_every=checkpoint_every, desc="dense boundaries")


# ----------------------------------------------------------------------------- finding 1: LPS

@dataclass
class LPSResult:
    table: pd.DataFrame          # block, sparsity, metric, loss, lps
    cv: pd.Series                # coefficient of variation of LPS over blocks, per sparsity
    base_loss: float             # dense mean NLL on the evaluation windows

    def vector(self, sparsity: float, metric: str | None = None) -> np.ndarray:
        t = self.table[np.isclose(self.table.sparsity, sparsity)]
        if metric is not None:
            t = t[t.metric == metric]
        return t.sort_values("block").lps.to_numpy()


@torch.no_grad()
def layer_sensitivity(source, metric: str = "wanda", sparsities=(0.5, 0.7, 0.9), *, eval_ids=None,
                      calib=None, blocks=None, bounds: Boundaries | None = None, batch_size: int | None = None,
                      progress: bool = True) -> LPSResult:
    """LPS of every block: mean NLL on ``eval_ids`` (default: the calibration windows) with only
    block l pruned at s by ``metric`` (dense statistics), minus the dense mean NLL.

    ``source``: a Session, a Statistics, or a model (then pass ``calib``). ``bounds`` reuses the
    cached dense boundaries of a previous call on the same ``eval_ids``."""
    if metric not in METRICS:
        raise PrunekitError(f"unknown metric '{metric}'; choose from {', '.join(METRICS)}")
    model, stats, calib, bs, _ = _resolve(source, calib)
    bs = batch_size or bs
    if metric != "magnitude" and stats.calib is None:
        raise PrunekitError(f"LPS with metric '{metric}' needs calibration data; pass calib=")
    if eval_ids is None:
        if stats.calib is None:
            raise PrunekitError("LPS needs evaluation windows; pass eval_ids= or calib=")
        eval_ids = stats.calib.input_ids
    sparsities = [float(s) for s in sparsities]
    lay = model.layout
    names = list(lay.linear_names)
    blocks = list(range(lay.num_blocks)) if blocks is None else list(blocks)
    bounds = bounds or dense_boundaries(model, eval_ids, bs)
    base = bounds.tail_nll(lay.num_blocks)
    rows = []
    bar = tqdm(total=len(blocks) * len(sparsities), desc=f"LPS[{metric}]", disable=bars_disabled(progress), leave=False)

    with weight_snapshot(model) as snap:  # the one save/restore scheme; dense again on exit

        def measure(i, block, st):
            if i not in blocks:
                return
            for s in sparsities:
                values = np.zeros((lay.num_blocks, len(names)))
                values[i] = s
                with snap.modify(i):
                    prune_block(i, block, st, values, metric, None, names)
                    loss = bounds.tail_nll(i)
                snap.restore([i])
                rows.append({"block": i, "sparsity": s, "metric": metric, "loss": loss, "lps": loss - base})
                bar.update(1)

        if metric == "sparsegpt":  # the OBS update needs the block's dense Hessians: one dense pass
            sequential(model, stats.calib.input_ids, collect=("hessian",), on_block=measure, modifies=False,
                       batch_size=bs, desc="LPS hessians", progress=False)
        else:
            norms = stats.wanda_norms() if metric == "wanda" else None
            dev = model.device
            for i in blocks:
                st = {"wanda": {n: SimpleNamespace(norm=norms[i][n].to(dev)) for n in names}} if norms else {}
                with model.onload(i):
                    measure(i, lay.blocks[i], st)
    bar.close()
    table = pd.DataFrame(rows).sort_values(["sparsity", "block"]).reset_index(drop=True)
    cv = table.groupby("sparsity").lps.apply(coefficient_of_variation).rename("lps_cv")
    return LPSResult(table, cv, base)


def lps_verdict(res: LPSResult, sparsity: float | None = None, cutoff: float = 0.25) -> str:
    """One sentence from the data: CV of LPS over blocks, most/least sensitive block."""
    s = sparsity if sparsity is not None else float(res.cv.index[len(res.cv) // 2])
    v = res.vector(s)
    cv = coefficient_of_variation(v)
    hi, lo = int(np.argmax(v)), int(np.argmin(v))
    kind = "non-uniform" if cv > cutoff else "roughly uniform"
    return (f"LPS at {s:.0%}: coefficient of variation {cv:.2f} across {len(v)} blocks, most sensitive "
            f"block {hi} (+{v[hi]:.3f} nats), least block {lo} ({v[lo]:+.3f}) → {kind} "
            f"(cut-off CV {cutoff}).")


# ----------------------------------------------------------------------------- finding 2: metric dependency

def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata
    return rankdata(-np.asarray(x, dtype=float), method="average")  # rank 1 = most sensitive


@dataclass
class MetricDependency:
    lps: pd.DataFrame          # block, sparsity, metric, loss, lps (all metrics)
    correlation: pd.DataFrame  # sparsity, metric_a, metric_b, spearman, top_a, top_b
    movers: pd.DataFrame       # sparsity, metric_a, metric_b, block, rank_a, rank_b, shift
    cv: pd.DataFrame           # metric × sparsity coefficient of variation
    base_loss: float


def metric_dependency(source, metrics=METRICS, sparsities=(0.5, 0.7, 0.9), *,
                      eval_ids=None, calib=None, results: dict[str, LPSResult] | None = None,
                      top: int = 3, progress: bool = True) -> MetricDependency:
    """LPS under each metric (sharing one dense-boundary cache), pairwise Spearman correlations
    of the LPS vectors and the ``top`` blocks whose sensitivity rank moves most per pair."""
    results = dict(results or {})
    model, stats, calib, bs, _ = _resolve(source, calib)
    bounds = None
    for mt in metrics:
        if mt not in results:
            if bounds is None:
                ev = eval_ids if eval_ids is not None else stats.calib.input_ids
                bounds = dense_boundaries(model, ev, bs)
            results[mt] = layer_sensitivity(stats, mt, sparsities, eval_ids=eval_ids, bounds=bounds,
                                            batch_size=bs, progress=progress)
    lps = pd.concat([results[mt].table for mt in metrics], ignore_index=True)
    corr, movers = [], []
    for s in sorted({float(x) for x in sparsities}):
        for a_i, a in enumerate(metrics):
            for b in metrics[a_i + 1:]:
                va, vb = results[a].vector(s), results[b].vector(s)
                ra, rb = _ranks(va), _ranks(vb)
                corr.append({"sparsity": s, "metric_a": a, "metric_b": b, "spearman": spearman(va, vb),
                             "top_a": int(np.argmax(va)), "top_b": int(np.argmax(vb))})
                shift = rb - ra
                for blk in np.argsort(-np.abs(shift), kind="stable")[:top]:
                    movers.append({"sparsity": s, "metric_a": a, "metric_b": b, "block": int(blk),
                                   "rank_a": float(ra[blk]), "rank_b": float(rb[blk]), "shift": float(shift[blk])})
    cv = pd.DataFrame({mt: results[mt].cv for mt in metrics}).T
    return MetricDependency(lps, pd.DataFrame(corr), pd.DataFrame(movers), cv,
                            results[metrics[0]].base_loss)


def dependency_verdict(dep: MetricDependency, cutoff: float = 0.9) -> str:
    c = dep.correlation
    worst = c.loc[c.spearman.idxmin()]
    mv = dep.movers[(dep.movers.sparsity == worst.sparsity) & (dep.movers.metric_a == worst.metric_a)
                    & (dep.movers.metric_b == worst.metric_b)].iloc[0]
    kind = "metric-dependent" if worst.spearman < cutoff else "nearly metric-independent"
    return (f"Lowest LPS rank correlation: {worst.metric_a} vs {worst.metric_b} at {worst.sparsity:.0%}, "
            f"Spearman {worst.spearman:.2f}; block {int(mv.block)} moves from rank {mv.rank_a:.0f} to "
            f"{mv.rank_b:.0f}; most sensitive block {int(worst.top_a)} vs {int(worst.top_b)} → {kind} "
            f"(cut-off rho {cutoff}).")


# ----------------------------------------------------------------------------- finding 3: redundancy uniformity

@torch.no_grad()
def nonoutlier_masks(stats, metric: str = "wanda", m: float = 5.0) -> list[dict[str, torch.Tensor]]:
    """Per block, per linear: dense weights whose score is <= m · mean dense score of the block
    (call while ``stats.model`` holds the dense weights)."""
    out = []
    for i in range(stats.num_blocks):
        A = stats.scores(i, metric)
        tau = m * sum(float(a.double().sum()) for a in A.values()) / sum(a.numel() for a in A.values())
        out.append({n: (a <= tau).cpu() for n, a in A.items()})
    return out


@torch.no_grad()
def measured_redundancy(model, masks: list[dict[str, torch.Tensor]], denominator: str = "surviving") -> np.ndarray:
    """Redundancy level (non-outlier ratio) of every block of a pruned model: surviving (non-zero)
    weights that were non-outliers in the dense model / surviving weights (or / all weights)."""
    rt = Runtime.of(model)
    lay = rt.layout
    out = []
    for i in range(lay.num_blocks):
        non = surv = tot = 0
        with rt.onload(i):
            for n, lin in lay.linears(i).items():
                alive = (lin.weight != 0).cpu()
                non += int((alive & masks[i][n]).sum())
                surv += int(alive.sum())
                tot += alive.numel()
        den = surv if denominator == "surviving" else tot
        out.append(non / den if den else 0.0)
    return np.asarray(out)


@torch.no_grad()
def current_redundancy(stats, metric: str = "wanda", m: float = 5.0) -> np.ndarray:
    """MRP reading "current" measured on the model as it is now (``stats.model`` pruned): per block,
    OWL's outlier test on the current weights scored with the dense statistics (pruned weights
    score 0): ``1 − #{A > m · mean A} / n`` (mean and ratio over all entries)."""
    out = []
    for i in range(stats.num_blocks):
        A = torch.cat([a.reshape(-1) for a in stats.scores(i, metric, current=True).values()]).double()
        out.append(1.0 - float((A > m * A.mean()).sum()) / A.numel())
    return np.asarray(out)


MEASURES = ("current", "frozen")


def random_allocations(sizes, target: float, n: int = 20, seed: int = 0, max_spread: float = 0.2,
                       concentration: float = 2.0, s_min: float = 0.0, s_max: float = 0.95) -> list[np.ndarray]:
    """``n`` seeded random budget-exact per-block allocations: ``target + spread·(L·p − 1)`` with
    p ~ Dirichlet(concentration·1), spread ~ U(0, max_spread) per allocation, then ``fit_budget``."""
    sizes = np.asarray(sizes, dtype=float)
    bsz = sizes.sum(1) if sizes.ndim == 2 else sizes
    L = len(bsz)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        p = rng.dirichlet(np.full(L, concentration))
        spread = rng.uniform(0, max_spread)
        out.append(fit_budget(target + spread * (L * p - 1), bsz, target, s_min, s_max))
    return out


DEFAULT_METHODS = ("uniform", "mrp", "owl", "alphapruning", "atp")


@dataclass
class Uniformity:
    table: pd.DataFrame   # allocation, kind, nor_std, nor_range, ppl, per_block, nor
    rho: float            # Spearman(nor_std, ppl)
    ci: tuple[float, float]
    rho_range: float      # Spearman(nor_range, ppl)


def redundancy_uniformity(session, target: float = 0.7, metric: str = "wanda", *, methods=None,
                          n_random: int = 20, seed: int = 0, m: float = 5.0, denominator: str = "surviving",
                          max_spread: float = 0.2, n_boot: int = 2000, method_options: dict | None = None,
                          progress: bool = True, measure: str = "current") -> Uniformity:
    """Prune with every allocation at ``target`` (real sequential pruning with ``metric``), measure
    the blocks' redundancy levels in the pruned model and the session's perplexity, and correlate
    redundancy spread with perplexity (seeded bootstrap CI). ``measure``: ``current`` (MRP's
    default reading: OWL's test on the current sparse block) or ``frozen`` (dense non-outliers
    among the survivors, with ``denominator``)."""
    if measure not in MEASURES:
        raise PrunekitError(f"unknown redundancy measure '{measure}'; choose from {', '.join(MEASURES)}")
    avail = registered_methods()
    methods = [mt for mt in (methods or DEFAULT_METHODS) if mt in avail]
    method_options = method_options or {}
    session.restore()
    masks = nonoutlier_masks(session.stats, metric, m)
    plans = []
    for mt in methods:
        opts = dict(method_options.get(mt, {}))
        if mt == "mrp":
            opts.setdefault("score", metric)
            opts.setdefault("m", m)
        plans.append((mt, "method", session.plan(mt, target, **opts).per_block))
    for j, v in enumerate(random_allocations(session.stats.sizes, target, n_random, seed, max_spread)):
        plans.append((f"random{j:02d}", "random", v))
    rows = []
    ds = session.eval_datasets[0]
    for name, kind, per_block in tqdm(plans, desc="allocations", disable=bars_disabled(progress), leave=False):
        session.restore()
        with weight_snapshot(session.runtime):  # pruned outside Session.run: restored on exit
            prune_model(session.runtime, session.calib.input_ids, np.asarray(per_block), metric,
                        batch_size=session.batch_size, progress=False)
            nor = (current_redundancy(session.stats, metric, m) if measure == "current"
                   else measured_redundancy(session.runtime, masks, denominator))
            ppl = session.evaluate([ds])[ds]["perplexity"]
        rows.append({"allocation": name, "kind": kind, "nor_std": float(nor.std()),
                     "nor_range": float(nor.max() - nor.min()), "ppl": ppl,
                     "sparsity_std": float(np.std(per_block)), "per_block": list(map(float, per_block)),
                     "nor": nor.tolist()})
    table = pd.DataFrame(rows)
    rho, lo, hi = bootstrap_spearman(table.nor_std, table.ppl, n_boot, seed)
    return Uniformity(table, rho, (lo, hi), spearman(table.nor_range, table.ppl))


def uniformity_verdict(u: Uniformity) -> str:
    lo, hi = u.ci
    if lo > 0:
        kind = "more uniform redundancy goes with lower perplexity (CI excludes 0)"
    elif hi < 0:
        kind = "more uniform redundancy goes with HIGHER perplexity (CI excludes 0)"
    else:
        kind = "no significant relation at this sample size (CI includes 0)"
    return (f"Spearman(redundancy std, perplexity) = {u.rho:.2f}, 95% bootstrap CI [{lo:.2f}, {hi:.2f}] over "
            f"{len(u.table)} allocations (range-based rho {u.rho_range:.2f}) → {kind}.")


def findings_table(lps: LPSResult | None = None, dep: MetricDependency | None = None,
                   uni: Uniformity | None = None) -> list[dict]:
    """Flat, JSON-ready summary of the three findings (for ``report.save_results``)."""
    rows = []
    if lps is not None:
        for s, cv in lps.cv.items():
            v = lps.vector(s)
            rows.append({"finding": "lps_nonuniform", "sparsity": float(s), "lps_cv": cv,
                         "most_sensitive": int(np.argmax(v)), "least_sensitive": int(np.argmin(v)),
                         "lps": v.tolist(), "verdict": lps_verdict(lps, s)})
    if dep is not None:
        for r in dep.correlation.to_dict(orient="records"):
            rows.append({"finding": "metric_dependency", **r})
        rows.append({"finding": "metric_dependency", "verdict": dependency_verdict(dep)})
    if uni is not None:
        rows.append({"finding": "redundancy_uniformity", "spearman": uni.rho, "ci_lo": uni.ci[0],
                     "ci_hi": uni.ci[1], "spearman_range": uni.rho_range, "n": len(uni.table),
                     "verdict": uniformity_verdict(uni)})
        for r in uni.table.drop(columns=["per_block", "nor"]).to_dict(orient="records"):
            rows.append({"finding": "redundancy_uniformity_run", **r})
    return rows


# ----------------------------------------------------------------------------- MRP vs baselines / ablations

def compare_mrp_variants(session, variants: dict, metrics=("wanda",), sparsities=(0.7,), *, m: float = 5.0,
                        denominator: str = "surviving", measure: str = "current") -> pd.DataFrame:
    """``Session.sweep`` over variants (label -> (allocation, options)) × metric × sparsity that also
    measures, on each pruned model, the redundancy levels (non-outlier ratio under that metric's
    dense score, multiplier ``m``). Unregistered allocations are skipped. Columns: variant,
    allocation, metric, sparsity, ppl, nor_std, nor_range, nor_dense_std, per_block, nor, nor_dense,
    allocate_s, options."""
    session.restore()
    masks = {mt: nonoutlier_masks(session.stats, mt, m) for mt in metrics}  # dense scores
    nor_dense = {mt: (current_redundancy(session.stats, mt, m) if measure == "current" else
                      np.array([sum(int(v.sum()) for v in blk.values()) / sum(v.numel() for v in blk.values())
                                for blk in masks[mt]])) for mt in metrics}  # "before" redundancy levels
    ds = session.eval_datasets[0]

    def on_run(rec, row):  # not named ``measure``: that would shadow the reading this call was given
        mt = row["metric"]
        nor = (current_redundancy(session.stats, mt, m) if measure == "current"
               else measured_redundancy(session.runtime, masks[mt], denominator))
        row.update(ppl=rec["perplexity"][ds], nor_std=float(nor.std()), nor_range=float(nor.max() - nor.min()),
                   nor_dense_std=float(nor_dense[mt].std()), per_block=rec["planned_sparsity"],
                   nor=nor.tolist(), nor_dense=nor_dense[mt].tolist(),
                   options={**variants[row["allocation"]][1], **rec["allocation_options"]})

    # principle 2 (the metric that prunes also scores) is Session.run's default for MRP
    df = session.sweep(variants, metrics, sparsities, on_run=on_run)
    if df.empty:
        return df
    return df.rename(columns={"allocation": "variant", "method": "allocation"})
