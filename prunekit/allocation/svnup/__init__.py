"""SV-NUP: Shapley-value-based non-uniform layer sparsity (Sun et al., arXiv 2505.01731; docs/methods.md §2).

Three parts:

1. ``LayerGame`` — the cooperative game whose players are the decoder blocks [I]. In the default
   ``game="dense_coalition"`` a coalition C is the set of blocks kept dense, every other block is
   pruned one-shot at the uniform target with the base metric, and ``v(C) = -mean NLL`` on a small
   held-out set disjoint from the pruning samples. ``game="pruned_coalition"`` takes C as the set of
   *pruned* blocks and ``v(C) = +mean NLL``; in both games a larger Shapley value means "pruning
   this block hurts more" → less sparsity. The pruned weights of every block are computed ONCE
   from dense-model activations (``prunekit.core.engine.sequential(..., modifies=False)``), so any coalition
   is assembled by copying cached dense / pruned tensors into the Linear weights in place.
   Hidden states entering block k are cached per prefix configuration (blocks < k), so an
   evaluation only runs the blocks from the first one that differs from a cached prefix on.
2. Estimators with one interface, ``fn(v, n, ...) -> ShapleyResult``: ``exact`` (enumeration,
   ≤ 16 players), ``monte_carlo`` (permutation sampling with a running standard error) and
   ``sliding_window`` (SWSV [I]: exact Shapley of each player inside a window of w neighbours,
   players outside the window held at the background state = absent from the coalition).
   ``v`` is called with an int bitmask (bit i = player i) or, with ``keys="set"``, a frozenset.
   Every estimator memoises coalition values; ``evaluations`` counts distinct coalitions.
3. The ``svnup`` allocation: Shapley values → per-block sparsity (bounded linear map with λ as OWL,
   or rank / softmax), registered with ``@register("svnup")``.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from prunekit.allocation.plan import SparsityPlan
from prunekit.allocation.registry import register
from prunekit.allocation.svnup.game import _resolve_heldout, layer_game
from prunekit.allocation.svnup.shapley import EXACT_MAX_PLAYERS, estimate
from prunekit.errors import PrunekitError
from prunekit.vocabulary import Metric


def map_to_sparsity(phi, target: float, sizes=None, mapping: str = "linear", lam: float = 0.08,
                    temperature: float = 1.0) -> np.ndarray:
    """Per-block sparsity from Shapley values; larger φ → lower sparsity (before budget fitting).

    linear [I, OWL-style]: z = minmax(φ), s = S + λ − 2λz (all-equal φ → uniform);
    rank: z = rank(φ)/(L−1) (ties averaged), same formula;
    softmax [I]: s ∝ softmax(−φ̃/T), φ̃ = standardised φ, scaled to the budget (T → ∞ gives uniform)."""
    phi = np.asarray(phi, dtype=float).reshape(-1)
    L = phi.size
    if not np.all(np.isfinite(phi)):
        raise PrunekitError("Shapley values contain NaN/inf; the layer game diverged — lower the target sparsity")
    if mapping in ("linear", "rank"):
        if mapping == "linear":
            span = phi.max() - phi.min()
            z = (phi - phi.min()) / span if span > 0 else np.full(L, 0.5)
        else:
            from scipy.stats import rankdata
            z = (rankdata(phi) - 1) / (L - 1) if L > 1 else np.full(L, 0.5)
        return target + lam - 2 * lam * z
    # softmax (mapping and temperature > 0 checked by the registry contract)
    sd = phi.std()
    zt = (phi - phi.mean()) / sd if sd > 0 else np.zeros(L)
    with np.errstate(over="ignore"):  # T → 0: the one-hot limit on the smallest φ̃, not an error
        p = np.exp(-(zt - zt.min()) / temperature)
    p /= p.sum()
    n = np.ones(L) if sizes is None else np.asarray(sizes, dtype=float).reshape(L, -1).sum(1)
    return p * target * n.sum() / (n * p).sum()


def _check_svnup(options: dict, target: float | None, num_blocks: int | None) -> None:
    """SV-NUP's domain beyond the bounds: a target in (0, 1) (the layer game prunes at it) and the
    exact estimator only up to EXACT_MAX_PLAYERS blocks (2^L coalitions)."""
    if target is not None and not 0.0 < target < 1.0:
        raise PrunekitError(f"svnup needs a target sparsity in (0, 1), got {target}")
    if options["estimator"] == "exact" and num_blocks is not None and num_blocks > EXACT_MAX_PLAYERS:
        raise PrunekitError(f"svnup option 'estimator': exact Shapley over {num_blocks} blocks needs "
                            f"2^{num_blocks} evaluations; use sliding_window or monte_carlo")


@register("svnup", reads=("wanda", "hessian", "calibration"), check=_check_svnup,
          bounds={"window": (1, (EXACT_MAX_PLAYERS, "num_blocks")), "lam": (0.0, 1.0), "heldout_samples": (1, None),
                  "n_permutations": (1, None), "seed": (0, None), "temperature": (0.0, None, "(]"),
                  "heldout_seqlen": (2, None)})
def svnup(stats, target: float, estimator: Literal["sliding_window", "monte_carlo", "exact"] = "sliding_window",
          window: int = 5, lam: float = 0.08, mapping: Literal["linear", "rank", "softmax"] = "linear",
          base_metric: Metric = "wanda",
          game: Literal["dense_coalition", "pruned_coalition"] = "dense_coalition",
          heldout_samples: int = 8, n_permutations: int = 100, seed: int = 0, temperature: float = 1.0,
          disjoint: bool = False, background: Literal["absent", "present", "both"] = "both",
          heldout_seqlen: int | None = None, heldout: str | None = None) -> SparsityPlan:
    """SV-NUP: blocks' Shapley values in a keep-dense/prune layer game → per-block sparsity (Sun et al. 2025).

    Defaults (docs/benchmarks.md, "SV-NUP defaults"): sliding window ``window=5`` with
    ``background='both'`` (the mean of the window's exact Shapley values with the other blocks
    pruned and with them dense; [I]) on ``heldout_samples=8`` windows of 512 tokens (or of the
    calibration length if shorter). 'both' reached Spearman 0.931 against a long Monte-Carlo
    reference on SmolLM2 (4 × 128 held-out) where the paper's 'absent' background reached 0.774.
    The held-out set is eight documents because the game's noise follows the number of documents:
    two disjoint 8 × 512 draws agree at Spearman 0.939 (SmolLM2) and 0.924 (Gemma-3), against 0.594
    for the same tokens as 2 × 2048 on SmolLM2 (w=3; docs/results.md). 'both' costs about twice the
    evaluations (864 on 30 blocks); at the CLI's 128 × 2048 calibration the plan took 3.84 × one
    Wanda prune on SmolLM2 with 2 × 2048 held-out tokens (docs/benchmarks.md P5), and one evaluation
    on 8 × 512 costs 0.90 × (SmolLM2) and 0.97 × (Gemma-3) one on 2 × 2048 (same tokens, shorter
    attention). With a small calibration the held-out set is a large fraction of the
    work: pass a smaller ``window`` or ``background='absent'`` for a quicker, rougher estimate.
    Progress: one bar per phase with its total known up front (pruned blocks, then the block
    forwards the coalitions will run), so tqdm's ETA holds.
    ``heldout``: dataset name for the held-out value set (default: the calibration dataset), or a
    Calibration / token tensor.
    Options: ``estimator`` how the Shapley values are estimated (exact within each window of blocks,
    Monte-Carlo permutations, or every coalition for at most 16 blocks); ``window`` blocks per
    sliding window; ``lam`` λ, half-width of the sparsity range around the target (linear, rank);
    ``mapping`` from Shapley values to sparsity; ``base_metric`` the solver that prunes a block in
    the game; ``game`` whether a coalition is the set of dense blocks or of pruned ones;
    ``heldout_samples`` held-out windows the game's loss is measured on; ``n_permutations``
    Monte-Carlo permutations; ``seed`` of the permutations; ``temperature`` of the softmax mapping;
    ``disjoint`` windows that partition the blocks instead of sliding by one; ``background`` the
    blocks outside a window: pruned (absent), dense (present) or the mean of both; ``heldout_seqlen``
    tokens per held-out window (default: 512, or the calibration length if shorter); ``heldout`` the held-out dataset
    (default: the calibration dataset), or a Calibration / token tensor. Shapley values are cached via ``stats.cached`` keyed by every
    option that affects them."""
    target = float(target)
    ids, hkey = _resolve_heldout(stats, heldout, heldout_samples, heldout_seqlen)
    est_opts = {"exact": {}, "monte_carlo": {"n_permutations": int(n_permutations), "seed": int(seed)},
                "sliding_window": {"window": int(window), "disjoint": bool(disjoint),
                                   "background": background}}[estimator]
    params = dict(target=round(target, 9), estimator=estimator, base_metric=base_metric, game=game,
                  heldout=hkey, **est_opts)

    def compute():
        g = layer_game(stats, target, base_metric, game, heldout=ids, progress=stats.progress)
        with g:
            res = estimate(g, g.n, estimator, progress=stats.progress, **est_opts)
            v_empty, v_full = g(0), g(g.full)
        se = res.stderr if res.stderr is not None else np.full(g.n, np.nan)
        return {"values": torch.tensor(res.values, dtype=torch.float64),
                "stderr": torch.tensor(se, dtype=torch.float64),
                "evaluations": torch.tensor([res.evaluations], dtype=torch.int64),
                "seconds": torch.tensor([res.seconds + g.build_seconds], dtype=torch.float64),
                "v_empty_full": torch.tensor([v_empty, v_full], dtype=torch.float64)}

    out = stats.cached("svnup_shapley", compute, **params)
    phi = out["values"].numpy().astype(float)
    sizes = np.asarray(stats.sizes, dtype=float)
    per_block = map_to_sparsity(phi, target, sizes, mapping, lam, temperature)
    n_block = sizes.sum(1)  # exact budget, §2 mapping step 3: s ← s − (weighted_mean(s) − S)
    per_block = per_block - ((per_block * n_block).sum() / n_block.sum() - target)
    values = np.repeat(per_block[:, None], sizes.shape[1], axis=1)
    extras = {"shapley": phi, "shapley_stderr": out["stderr"].numpy().astype(float),
              "shapley_evaluations": int(out["evaluations"][0]), "shapley_seconds": float(out["seconds"][0]),
              "v_empty": float(out["v_empty_full"][0]), "v_full": float(out["v_empty_full"][1]),
              "heldout": hkey}
    options = dict(estimator=estimator, window=window, lam=lam, mapping=mapping, base_metric=base_metric,
                   game=game, heldout_samples=heldout_samples, n_permutations=n_permutations, seed=seed,
                   temperature=temperature, disjoint=disjoint, background=background,
                   heldout_seqlen=heldout_seqlen,
                   heldout=heldout if heldout is None or isinstance(heldout, str) else hkey)
    return SparsityPlan(values, sizes, target, "svnup", options, list(stats.linear_names), extras)
