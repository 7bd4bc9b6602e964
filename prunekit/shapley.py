"""SV-NUP: Shapley-value-based non-uniform layer sparsity (Sun et al., arXiv 2505.01731; ALGORITHMS.md §2).

Three parts:

1. ``LayerGame`` — the cooperative game whose players are the decoder blocks [I]. In the default
   ``game="dense_coalition"`` a coalition C is the set of blocks kept dense, every other block is
   pruned one-shot at the uniform target with the base metric, and ``v(C) = -mean NLL`` on a small
   held-out set disjoint from the pruning samples. ``game="pruned_coalition"`` takes C as the set of
   *pruned* blocks and ``v(C) = +mean NLL``; in both games a larger Shapley value means "pruning
   this block hurts more" → less sparsity. The pruned weights of every block are computed ONCE
   from dense-model activations (``calibrate.sequential(..., modifies=False)``), so any coalition
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

import itertools
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .allocate import SparsityPlan, register
from .calibrate import BlockInputs, capture, head_logits, run_block, sequential
from .data import Calibration
from .evaluate import next_token_ce
from .errors import PrunekitError
from .models import layout
from .prune import magnitude_mask, sparsegpt, wanda_mask

__all__ = ["LayerGame", "ShapleyResult", "exact", "monte_carlo", "sliding_window", "estimate",
           "shapley_from_table", "map_to_sparsity", "svnup", "layer_game", "heldout_data",
           "approximation_study", "evaluations_to_reach", "paper_claim", "notebook_defaults",
           "compare_allocations", "ESTIMATORS", "GAMES",
           "MAPPINGS", "BASE_METRICS", "BACKGROUNDS", "EXACT_MAX_PLAYERS"]

EXACT_MAX_PLAYERS = 16
GAMES = ("dense_coalition", "pruned_coalition")
MAPPINGS = ("linear", "rank", "softmax")
BASE_METRICS = ("wanda", "magnitude", "sparsegpt")


# ============================================================================ estimators

@dataclass
class ShapleyResult:
    """Shapley estimate: ``values`` (n,), ``evaluations`` (distinct coalitions evaluated),
    ``seconds`` (wall time), ``stderr`` (Monte-Carlo only). ``trace`` (Monte-Carlo) holds one
    entry per permutation: permutations, evaluations, seconds and the running estimate."""
    values: np.ndarray
    evaluations: int
    seconds: float
    estimator: str
    stderr: np.ndarray | None = None
    options: dict = field(default_factory=dict)
    trace: list[dict] = field(default_factory=list, repr=False)


class _Memo:
    """Coalition values by bitmask, counting distinct evaluations; ``prefetch`` evaluates a batch in
    trie order (player 0 varies slowest), so a prefix-caching game re-runs as few blocks as possible."""

    def __init__(self, v: Callable, n: int, keys: str = "bitmask"):
        if keys not in ("bitmask", "set"):
            raise PrunekitError(f"keys must be 'bitmask' or 'set', got '{keys}'")
        if n < 1:
            raise PrunekitError(f"a game needs at least one player, got n={n}")
        self.v, self.n, self.keys = v, int(n), keys
        self.table: dict[int, float] = {}

    def __call__(self, mask: int) -> float:
        mask = int(mask)
        if mask not in self.table:
            arg = frozenset(i for i in range(self.n) if mask >> i & 1) if self.keys == "set" else mask
            self.table[mask] = float(self.v(arg))
        return self.table[mask]

    def trie_key(self, mask: int) -> int:
        return int(format(mask, f"0{self.n}b")[::-1], 2)

    def prefetch(self, masks, progress: bool = False, desc: str = "coalitions") -> None:
        todo = sorted({int(m) for m in masks} - self.table.keys(), key=self.trie_key)
        for m in tqdm(todo, desc=desc, disable=not progress, leave=False):
            self(m)

    @property
    def evaluations(self) -> int:
        return len(self.table)


def _weights(m: int) -> np.ndarray:
    """Shapley weight |C|!(m-|C|-1)!/m! of a coalition of size |C| not containing the player."""
    return np.array([math.factorial(c) * math.factorial(m - c - 1) / math.factorial(m) for c in range(m)])


def _popcount(a: np.ndarray) -> np.ndarray:
    c = np.zeros_like(a)
    x = a.copy()
    while x.any():
        c += x & 1
        x >>= 1
    return c


def shapley_from_table(V: np.ndarray) -> np.ndarray:
    """Exact Shapley values of an m-player game given ``V[mask]`` for all 2^m masks:
    φ_i = Σ_{C ∌ i} |C|!(m-|C|-1)!/m! · (V[C ∪ i] − V[C])."""
    V = np.asarray(V, dtype=float)
    m = int(round(math.log2(V.size)))
    if V.size != 1 << m:
        raise PrunekitError(f"value table has {V.size} entries, not a power of two")
    masks = np.arange(V.size, dtype=np.int64)
    w = _weights(m)[np.minimum(_popcount(masks), m - 1)]
    phi = np.empty(m)
    for i in range(m):
        without = masks[(masks >> i & 1) == 0]
        phi[i] = float(np.sum(w[without] * (V[without | (1 << i)] - V[without])))
    return phi


def exact(v: Callable, n: int, keys: str = "bitmask", progress: bool = False) -> ShapleyResult:
    """Exact Shapley values by enumerating all 2^n coalitions (refused above 16 players)."""
    if n > EXACT_MAX_PLAYERS:
        raise PrunekitError(f"exact Shapley needs 2^{n} coalition evaluations; n={n} > {EXACT_MAX_PLAYERS}: "
                            "use estimator='sliding_window' or 'monte_carlo'")
    t0 = time.perf_counter()
    memo = _Memo(v, n, keys)
    memo.prefetch(range(1 << n), progress, desc="exact Shapley")
    phi = shapley_from_table(np.array([memo.table[m] for m in range(1 << n)]))
    return ShapleyResult(phi, memo.evaluations, time.perf_counter() - t0, "exact")


def monte_carlo(v: Callable, n: int, n_permutations: int = 100, seed: int = 0, keys: str = "bitmask",
                progress: bool = False, until: Callable[[dict], bool] | None = None) -> ShapleyResult:
    """Permutation-sampling Shapley (Castro et al. 2009): for each random order, add the players one
    by one and credit each with its marginal contribution; φ̂ = mean, stderr = sd/√m (Welford).
    ``until(trace_entry) -> bool`` may stop the sampling early (after a whole permutation)."""
    if n_permutations < 1:
        raise PrunekitError(f"n_permutations must be >= 1, got {n_permutations}")
    t0 = time.perf_counter()
    memo = _Memo(v, n, keys)
    rng = np.random.default_rng(seed)
    mean, m2 = np.zeros(n), np.zeros(n)
    trace = []
    k = 0
    for k in tqdm(range(1, n_permutations + 1), desc="Monte-Carlo Shapley", disable=not progress, leave=False):
        mask, prev = 0, memo(0)
        for p in rng.permutation(n):
            mask |= 1 << int(p)
            cur = memo(mask)
            d = cur - prev
            delta = d - mean[p]
            mean[p] += delta / k
            m2[p] += delta * (d - mean[p])
            prev = cur
        trace.append({"permutations": k, "evaluations": memo.evaluations,
                      "seconds": time.perf_counter() - t0, "values": mean.copy()})
        if until is not None and until(trace[-1]):
            break
    stderr = np.sqrt(m2 / (k - 1) / k) if k > 1 else np.full(n, np.nan)
    return ShapleyResult(mean.copy(), memo.evaluations, time.perf_counter() - t0, "monte_carlo", stderr,
                         {"n_permutations": k, "seed": seed}, trace)


def _windows(n: int, w: int, disjoint: bool, edge: str) -> list[tuple[list[int], list[int]]]:
    """(window players, players whose value this window provides)."""
    if disjoint:
        return [(list(range(a, min(a + w, n))),) * 2 for a in range(0, n, w)]
    out, h = [], (w - 1) // 2
    for l in range(n):
        lo = l - h
        if edge == "shift":  # keep the window size w at the ends
            lo = min(max(lo, 0), n - w)
            out.append((list(range(lo, lo + w)), [l]))
        else:               # truncate at the ends
            out.append((list(range(max(lo, 0), min(lo + w, n))), [l]))
    return out


BACKGROUNDS = ("absent", "present", "both")


def sliding_window(v: Callable, n: int, window: int = 5, disjoint: bool = False, edge: str = "shift",
                   background: int | str = "absent", keys: str = "bitmask", progress: bool = False) -> ShapleyResult:
    """Sliding-window Shapley (SWSV, ALGORITHMS.md §2 [I]): φ_l = exact Shapley value of l in the
    sub-game of the w players of its window (centred on l; ``edge='shift'`` keeps size w at the
    ends, ``'truncate'`` cuts it), players outside the window fixed at the background state.

    ``background``: 'absent' (default; in the dense-coalition layer game the other blocks are
    pruned), 'present' (the other blocks dense; equals 'absent' on the dual game
    v*(C) = v(N) − v(N∖C), which has the same exact Shapley values), 'both' (the mean of the two,
    [I]: the two contexts bias the estimate in opposite directions), or an int bitmask of the
    players present outside the window. ``disjoint=True``: windows partition the players into
    consecutive groups of w."""
    if window < 1:
        raise PrunekitError(f"window must be >= 1, got {window}")
    if edge not in ("shift", "truncate"):
        raise PrunekitError(f"edge must be 'shift' or 'truncate', got '{edge}'")
    full = (1 << n) - 1
    if isinstance(background, str):
        if background not in BACKGROUNDS:
            raise PrunekitError(f"background must be one of {', '.join(BACKGROUNDS)} or a bitmask, got '{background}'")
        bgs = {"absent": [0], "present": [full], "both": [0, full]}[background]
    else:
        bgs = [int(background) & full]
    t0 = time.perf_counter()
    memo = _Memo(v, n, keys)
    w = min(int(window), n)
    wins = _windows(n, w, disjoint, edge)

    def coalition(bg, players, local):
        out = bg
        for j, p in enumerate(players):
            out = out | (1 << p) if local >> j & 1 else out & ~(1 << p)
        return out

    memo.prefetch((coalition(bg, pl, s) for bg in bgs for pl, _ in wins for s in range(1 << len(pl))), progress,
                  desc=f"sliding-window Shapley (w={w})")
    phi = np.zeros(n)
    for bg in bgs:
        done: dict[tuple, np.ndarray] = {}
        for players, targets in wins:
            key = tuple(players)
            if key not in done:
                done[key] = shapley_from_table(
                    np.array([memo(coalition(bg, players, s)) for s in range(1 << len(players))]))
            for t in targets:
                phi[t] += done[key][players.index(t)] / len(bgs)
    return ShapleyResult(phi, memo.evaluations, time.perf_counter() - t0, "sliding_window",
                         options={"window": w, "disjoint": disjoint, "edge": edge, "background": background})


ESTIMATORS = {"exact": exact, "monte_carlo": monte_carlo, "sliding_window": sliding_window}


def estimate(v: Callable, n: int, estimator: str = "sliding_window", **options) -> ShapleyResult:
    """Dispatch to a named estimator (``exact``, ``monte_carlo``, ``sliding_window``)."""
    if estimator not in ESTIMATORS:
        raise PrunekitError(f"unknown Shapley estimator '{estimator}'; choose from {', '.join(ESTIMATORS)}")
    return ESTIMATORS[estimator](v, n, **options)


# ============================================================================ the layer game

class LayerGame:
    """Players = decoder blocks of ``model``; ``game(mask)`` is the value of coalition ``mask``.

    ``calib_ids``: pruning samples (n, seqlen) from which each block's pruned weights are computed
    one-shot on dense activations. ``heldout_ids``: the value set (tensor or Calibration).
    The model's weights are swapped in place while the game is used; ``restore()`` (or leaving a
    ``with`` block) puts the dense weights back; build the game on the dense model. ``store``:
    'weights' keeps each block's pruned weights (a swap is one copy per linear) or 'masks' keeps
    boolean masks (magnitude / Wanda; 1 byte per weight, slower swap) for large models.
    ``value_cache`` memoises coalition values; hidden states entering block k are kept per prefix
    configuration (LRU, up to ``state_cache_mb``), so an evaluation runs only the blocks from the
    first one that differs from a cached prefix (≈ half the blocks for sliding window and MC)."""

    def __init__(self, model, calib_ids: torch.Tensor | None, heldout_ids, target: float,
                 base_metric: str = "wanda", game: str = "dense_coalition", batch_size: int = 8,
                 state_cache_mb: float = 512.0, blocksize: int = 128, percdamp: float = 0.01,
                 store: str = "weights", progress: bool = True):
        if base_metric not in BASE_METRICS:
            raise PrunekitError(f"unknown base metric '{base_metric}'; choose from {', '.join(BASE_METRICS)}")
        if game not in GAMES:
            raise PrunekitError(f"unknown game '{game}'; choose from {', '.join(GAMES)}")
        if not (0.0 < float(target) < 1.0):
            raise PrunekitError(f"target sparsity {target} must lie in (0, 1)")
        if store not in ("weights", "masks"):
            raise PrunekitError(f"store must be 'weights' or 'masks', got '{store}'")
        if base_metric != "magnitude" and calib_ids is None:
            raise PrunekitError(f"base metric '{base_metric}' needs calibration samples (calib_ids)")
        ids = heldout_ids.input_ids if isinstance(heldout_ids, Calibration) else heldout_ids
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[1] < 2:
            raise PrunekitError("held-out set must be a (samples, seqlen >= 2) token tensor or a Calibration")
        self.model, self.target, self.base_metric, self.game = model, float(target), base_metric, game
        self.layout = layout(model)
        self.n = self.layout.num_blocks
        self.full = (1 << self.n) - 1
        self.batch_size, self.progress, self.store = batch_size, progress, store
        self.heldout_ids = ids
        self._state_budget = int(state_cache_mb * 2 ** 20)
        t0 = time.perf_counter()
        self._dense: list[dict[str, torch.Tensor]] = [
            {k: m.weight.detach().clone() for k, m in self.layout.linears(i).items()} for i in range(self.n)]
        self._pruned = self._build_pruned(calib_ids, blocksize, percdamp)
        self.build_seconds = time.perf_counter() - t0
        self._is_dense = [True] * self.n
        p0 = next(model.parameters())
        self._zero = torch.zeros((), dtype=p0.dtype, device=p0.device)
        self._inputs: BlockInputs = capture(model, ids, batch_size)  # embeddings: shared by every coalition
        self._states: OrderedDict[tuple[int, int], list[torch.Tensor]] = OrderedDict()
        self._state_bytes = 0
        self.value_cache: dict[int, float] = {}
        self.blocks_run = 0     # block forwards spent (cost accounting: L per plain forward)
        self.forwards = 0       # coalition evaluations actually computed

    # ---- pruned weights, one-shot per block on dense activations
    @torch.no_grad()
    def _build_pruned(self, calib_ids, blocksize, percdamp) -> list[dict[str, torch.Tensor]]:
        """Per block and linear: the pruned weight (``store='weights'``: a swap is one copy) or, for
        magnitude / Wanda with ``store='masks'``, a boolean mask (True = pruned; 1 byte per weight
        but a slower swap). SparseGPT always stores weights (it updates surviving weights).
        The model is not modified."""
        s, out = self.target, [dict() for _ in range(self.n)]

        def keep(i, block, stats):
            for name, lin in self.layout.linears(i).items():
                W = lin.weight.detach()
                if self.base_metric in ("magnitude", "wanda"):
                    mask = magnitude_mask(W, s) if self.base_metric == "magnitude" else \
                        wanda_mask(W, stats["wanda"][name].norm, s)
                    out[i][name] = mask if self.store == "masks" else W.masked_fill(mask, 0)
                else:
                    out[i][name] = sparsegpt(W, stats["hessian"][name].H, s, None, blocksize, percdamp).to(W.dtype)

        if self.base_metric == "magnitude":
            for i in range(self.n):
                keep(i, self.layout.blocks[i], {})
        else:
            collect = ("wanda",) if self.base_metric == "wanda" else ("hessian",)
            sequential(self.model, calib_ids, collect=collect, on_block=keep, modifies=False,
                       batch_size=self.batch_size, desc=f"SV-NUP pruned blocks [{self.base_metric}]",
                       progress=self.progress)
        return out

    # ---- weight swapping
    @torch.no_grad()
    def _set_block(self, i: int, dense: bool) -> None:
        if self._is_dense[i] == dense:
            return
        for name, lin in self.layout.linears(i).items():
            W, p = lin.weight, self._pruned[i][name]
            if dense:
                W.copy_(self._dense[i][name])
            elif p.dtype == torch.bool:  # one fused pass: W = dense with the mask zeroed
                torch.where(p, self._zero, self._dense[i][name], out=W)
            else:
                W.copy_(p)
        self._is_dense[i] = dense

    @torch.no_grad()
    def restore(self) -> None:
        """Put every block's dense weights back."""
        for i in range(self.n):
            self._set_block(i, True)

    def __enter__(self) -> "LayerGame":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def pruned_weight(self, i: int, name: str) -> torch.Tensor:
        """Block i's pruned weight for linear ``name`` (for checks)."""
        p = self._pruned[i][name]
        return self._dense[i][name].masked_fill(p, 0) if p.dtype == torch.bool else p.clone()

    # ---- evaluation
    def dense_set(self, coalition: int) -> int:
        """Bitmask of blocks kept dense for a coalition of this game."""
        return coalition if self.game == "dense_coalition" else self.full & ~coalition

    def __call__(self, coalition) -> float:
        if isinstance(coalition, (set, frozenset, list, tuple)):
            coalition = sum(1 << int(i) for i in set(coalition))
        coalition = int(coalition)
        if not (0 <= coalition <= self.full):
            raise PrunekitError(f"coalition bitmask {coalition} is outside [0, 2^{self.n})")
        if coalition not in self.value_cache:
            nll = self.nll(self.dense_set(coalition))
            self.value_cache[coalition] = -nll if self.game == "dense_coalition" else nll
        return self.value_cache[coalition]

    def _store(self, key, states) -> None:
        size = sum(h.numel() * h.element_size() for h in states)
        if size > self._state_budget:
            return
        while self._state_bytes + size > self._state_budget and self._states:
            _, old = self._states.popitem(last=False)
            self._state_bytes -= sum(h.numel() * h.element_size() for h in old)
        self._states[key] = states
        self._state_bytes += size

    @torch.no_grad()
    def nll(self, dense_mask: int) -> float:
        """Mean next-token NLL on the held-out set of the model whose blocks in ``dense_mask`` are
        dense and the others pruned. Starts from the longest cached prefix of hidden states."""
        start, states = 0, self._inputs.hidden
        for k in range(self.n - 1, 0, -1):
            key = (k, dense_mask & ((1 << k) - 1))
            if key in self._states:
                self._states.move_to_end(key)
                start, states = k, self._states[key]
                break
        for i in range(start, self.n):
            self._set_block(i, bool(dense_mask >> i & 1))
            block = self.layout.blocks[i]
            states = [run_block(block, h, self._inputs.block_kwargs(i, j)) for j, h in enumerate(states)]
            self.blocks_run += 1
            if i + 1 < self.n:
                self._store((i + 1, dense_mask & ((1 << (i + 1)) - 1)), states)
        self.forwards += 1
        return self._head_nll(states)

    @torch.no_grad()
    def _head_nll(self, final: list[torch.Tensor]) -> float:
        """Final norm + LM head + CE on the final hidden states (``calibrate.head_logits``)."""
        nll = [next_token_ce(head_logits(self.model, h, x), x).cpu() for h, x in zip(final, self._batches())]
        return float(torch.cat(nll).mean())

    @torch.no_grad()
    def plain_forward_nll(self) -> float:
        """One ordinary full forward over the held-out set with the current weights (reference cost)."""
        dev = next(self.model.parameters()).device
        nll = [next_token_ce(self.model(input_ids=x.to(dev), use_cache=False).logits, x).cpu()
               for x in self._batches()]
        return float(torch.cat(nll).mean())

    def _batches(self) -> list[torch.Tensor]:
        return [self.heldout_ids[j:j + self.batch_size] for j in range(0, self.heldout_ids.shape[0], self.batch_size)]

    def clear_cache(self) -> None:
        """Forget coalition values and cached hidden states (for honest timing of a new estimator)."""
        self.value_cache.clear()
        self._states.clear()
        self._state_bytes = 0


def _tokenizer(stats):
    tok = getattr(stats, "tokenizer", None)
    if tok is not None:
        return tok
    from transformers import AutoTokenizer
    path = getattr(stats.model, "name_or_path", None) or getattr(stats.model.config, "_name_or_path", None)
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise PrunekitError(f"SV-NUP needs a tokenizer for its held-out set and none was found at '{path}'; "
                            "pass heldout=<Calibration or token tensor>") from e


def heldout_data(stats, nsamples: int = 8, seqlen: int | None = None, dataset: str | None = None) -> Calibration:
    """Held-out value set: ``nsamples`` windows of the calibration dataset drawn with seed
    calib.seed + 1, excluding the pruning samples (disjoint by construction)."""
    from .data import calibration_data
    if stats.calib is None:
        raise PrunekitError("SV-NUP needs calibration data to draw a disjoint held-out set; pass calib= to Statistics")
    if nsamples < 1:
        raise PrunekitError(f"heldout_samples must be >= 1, got {nsamples}")
    return calibration_data(dataset or stats.calib.dataset, _tokenizer(stats), nsamples,
                            seqlen or stats.calib.seqlen, stats.calib.seed + 1, exclude=stats.calib)


def _resolve_heldout(stats, heldout, nsamples, seqlen) -> tuple[torch.Tensor, str]:
    if isinstance(heldout, Calibration):
        return heldout.input_ids, heldout.key()
    if isinstance(heldout, torch.Tensor):
        import hashlib
        return heldout, "tensor-" + hashlib.sha256(heldout.cpu().numpy().tobytes()).hexdigest()[:16]
    if heldout is None or isinstance(heldout, str):
        cal = heldout_data(stats, nsamples, seqlen, heldout)
        return cal.input_ids, cal.key()
    raise PrunekitError("heldout must be a dataset name, a Calibration or a (samples, seqlen) token tensor")


def layer_game(stats, target: float, base_metric: str = "wanda", game: str = "dense_coalition",
               heldout=None, heldout_samples: int = 8, heldout_seqlen: int | None = None,
               progress: bool = True, **kw) -> LayerGame:
    """The SV-NUP layer game for ``stats.model`` pruned at ``target`` (see ``LayerGame``)."""
    ids, _ = _resolve_heldout(stats, heldout, heldout_samples, heldout_seqlen)
    calib_ids = stats.calib.input_ids if stats.calib is not None else None
    stats.dense_passes += base_metric != "magnitude"
    return LayerGame(stats.model, calib_ids, ids, target, base_metric, game,
                     batch_size=getattr(stats, "batch_size", 8), progress=progress, **kw)


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
        if lam < 0:
            raise PrunekitError(f"lam must be >= 0, got {lam}")
        if mapping == "linear":
            span = phi.max() - phi.min()
            z = (phi - phi.min()) / span if span > 0 else np.full(L, 0.5)
        else:
            from scipy.stats import rankdata
            z = (rankdata(phi) - 1) / (L - 1) if L > 1 else np.full(L, 0.5)
        return target + lam - 2 * lam * z
    if mapping == "softmax":
        if not temperature > 0:
            raise PrunekitError(f"temperature must be > 0, got {temperature}")
        sd = phi.std()
        zt = (phi - phi.mean()) / sd if sd > 0 else np.zeros(L)
        p = np.exp(-(zt - zt.min()) / temperature)
        p /= p.sum()
        n = np.ones(L) if sizes is None else np.asarray(sizes, dtype=float).reshape(L, -1).sum(1)
        return p * target * n.sum() / (n * p).sum()
    raise PrunekitError(f"unknown mapping '{mapping}'; choose from {', '.join(MAPPINGS)}")


@register("svnup")
def svnup(stats, target: float, estimator: str = "sliding_window", window: int = 5, lam: float = 0.08,
          mapping: str = "linear", base_metric: str = "wanda", game: str = "dense_coalition",
          heldout_samples: int = 8, n_permutations: int = 100, seed: int = 0, temperature: float = 1.0,
          disjoint: bool = False, background: str = "absent", heldout_seqlen: int | None = None,
          heldout=None) -> SparsityPlan:
    """SV-NUP: blocks' Shapley values in a keep-dense/prune layer game → per-block sparsity (Sun et al. 2025).

    ``background`` (sliding window): blocks outside the window 'absent' from the coalition (the
    spec; pruned in the default game), 'present', or 'both' (mean of the two; [I], about twice the
    evaluations, markedly closer to the Monte-Carlo reference on SmolLM2 — see the benchmark).
    ``heldout``: dataset name for the held-out value set (default: the calibration dataset), or a
    Calibration / token tensor. Shapley values are cached via ``stats.cached`` keyed by every
    option that affects them."""
    target = float(target)
    if not (0.0 < target < 1.0):
        raise PrunekitError(f"sparsity {target} must lie in (0, 1) for SV-NUP")
    if estimator not in ESTIMATORS:
        raise PrunekitError(f"unknown Shapley estimator '{estimator}'; choose from {', '.join(ESTIMATORS)}")
    if mapping not in MAPPINGS:
        raise PrunekitError(f"unknown mapping '{mapping}'; choose from {', '.join(MAPPINGS)}")
    if estimator == "exact" and stats.num_blocks > EXACT_MAX_PLAYERS:
        raise PrunekitError(f"exact Shapley over {stats.num_blocks} blocks needs 2^{stats.num_blocks} evaluations; "
                            "use estimator='sliding_window' or 'monte_carlo'")
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


# ============================================================================ studies (notebook / benchmark)

def _spearman(a, b) -> float:
    from scipy.stats import spearmanr
    r = spearmanr(a, b).statistic
    return float(r) if np.isfinite(r) else float("nan")


def _rel_error(a, ref) -> float:
    return float(np.linalg.norm(np.asarray(a) - ref) / max(np.linalg.norm(ref), 1e-300))


def evaluations_to_reach(trace: list[dict], reference, threshold: float = 0.9) -> dict | None:
    """First Monte-Carlo checkpoint whose Spearman ρ against ``reference`` is ≥ ``threshold``
    (None if never reached): {permutations, evaluations, seconds, spearman}."""
    for t in trace:
        r = _spearman(t["values"], reference)
        if r >= threshold:
            return {"permutations": t["permutations"], "evaluations": t["evaluations"],
                    "seconds": t["seconds"], "spearman": r}
    return None


def approximation_study(v: Callable, n: int, reference_permutations: int = 200, reference_seed: int = 12345,
                        mc_permutations: int = 50, mc_seed: int = 0, windows=(3, 5), disjoint=(False,),
                        backgrounds=("absent",), checkpoints: int = 8, fresh: bool = True,
                        progress: bool = True, reference: ShapleyResult | None = None):
    """Approximation quality vs cost against a long Monte-Carlo reference.

    Rows (pandas DataFrame): sliding window for every w in ``windows`` × ``disjoint`` ×
    ``backgrounds``, and the
    Monte-Carlo estimate (seed ``mc_seed``, independent of the reference) at ``checkpoints``
    geometrically spaced permutation counts up to ``mc_permutations``. Columns: estimator,
    setting, evaluations, seconds, spearman, rel_error (‖φ − φ_ref‖/‖φ_ref‖). ``fresh`` clears the
    game's caches before each estimator (if ``v`` has ``clear_cache``) so the seconds are honest.
    The reference result is attached as ``df.attrs['reference']``."""
    import pandas as pd

    def clear():
        if fresh and hasattr(v, "clear_cache"):
            v.clear_cache()

    if reference is None:
        clear()
        reference = monte_carlo(v, n, reference_permutations, reference_seed, progress=progress)
    ref = reference.values
    rows = []
    for w, dj, bg in itertools.product(windows, disjoint, backgrounds):
        clear()
        r = sliding_window(v, n, w, disjoint=dj, background=bg, progress=progress)
        rows.append({"estimator": "sliding_window" + ("_disjoint" if dj else ""),
                     "setting": f"w={min(w, n)}" + ("" if bg == "absent" else f",{bg}"),
                     "evaluations": r.evaluations, "seconds": r.seconds,
                     "spearman": _spearman(r.values, ref), "rel_error": _rel_error(r.values, ref)})
    clear()
    mc = monte_carlo(v, n, mc_permutations, mc_seed, progress=progress)
    ks = sorted({int(round(x)) for x in np.geomspace(1, mc_permutations, checkpoints)} | {mc_permutations})
    for k in ks:
        t = mc.trace[k - 1]
        rows.append({"estimator": "monte_carlo", "setting": f"perms={k}", "evaluations": t["evaluations"],
                     "seconds": t["seconds"], "spearman": _spearman(t["values"], ref),
                     "rel_error": _rel_error(t["values"], ref)})
    df = pd.DataFrame(rows)
    df.attrs["reference"] = {"values": ref.tolist(), "stderr": None if reference.stderr is None else reference.stderr.tolist(),
                             "permutations": reference.options.get("n_permutations"),
                             "evaluations": reference.evaluations, "seconds": reference.seconds}
    return df


def paper_claim(table, sparsity: float = 0.7, metric: str = "sparsegpt", dataset: str = "wikitext2",
                claimed: float = 18.01) -> str:
    """One sentence comparing SV-NUP with uniform at ``sparsity`` under ``metric`` against the
    paper's claim (−18.01 % perplexity vs uniform SparseGPT at 70 %, LLaMA-7B). ``table``: DataFrame
    or records with columns allocation, metric, sparsity, ``dataset`` (perplexity)."""
    import pandas as pd
    df = pd.DataFrame(table)
    sel = df[(df["metric"] == metric) & (np.isclose(df["sparsity"].astype(float), sparsity))]
    try:
        sv = float(sel[sel["allocation"] == "svnup"][dataset].iloc[0])
        un = float(sel[sel["allocation"] == "uniform"][dataset].iloc[0])
    except (IndexError, KeyError):
        return f"Cannot check the claim: the table has no svnup and uniform {metric} rows at {sparsity:.0%}."
    change = 100.0 * (sv - un) / un
    if metric != "sparsegpt":  # the paper's number is for SparseGPT; another solver does not test it
        return (f"At {sparsity:.0%} sparsity with {metric}, SV-NUP gives {dataset} perplexity {sv:.2f} vs "
                f"{un:.2f} for uniform ({change:+.1f} %). The paper's claim (−{claimed:.2f} %, LLaMA-7B) is "
                f"for SparseGPT, which this run did not measure, so it is neither confirmed nor refuted.")
    verdict = ("reproduces" if change <= -0.5 * claimed else
               "points the same way as, but is weaker than," if change < 0 else "does NOT reproduce")
    return (f"At {sparsity:.0%} sparsity with {metric}, SV-NUP gives {dataset} perplexity {sv:.2f} vs {un:.2f} "
            f"for uniform ({change:+.1f} %); this {verdict} the paper's claim of −{claimed:.2f} % "
            f"(LLaMA-7B).")


# ============================================================================ notebook helpers

_NOTEBOOK = {
    # held-out value set and estimator sizes per profile; quick = CI rendering on a shared CPU
    "quick": dict(heldout_samples=1, heldout_seqlen=32, window=3, reference_permutations=4, mc_permutations=3,
                  study_windows=(3,), study_backgrounds=("absent",), sparsities=(0.7,),
                  metrics=("wanda",), game_metric="wanda"),  # SparseGPT costs ~100 s a prune on CPU
    "cpu": dict(heldout_samples=8, heldout_seqlen=128, window=5, reference_permutations=100, mc_permutations=60,
                study_windows=(3, 5), study_backgrounds=("absent", "both"), sparsities=(0.6, 0.7),
                metrics=("sparsegpt", "wanda"), game_metric="wanda"),
    "paper": dict(heldout_samples=32, heldout_seqlen=None, window=5, reference_permutations=400,
                  mc_permutations=200, study_windows=(3, 5, 7), study_backgrounds=("absent", "both"),
                  sparsities=(0.6, 0.7), metrics=("sparsegpt", "wanda"), game_metric="same"),
}


def notebook_defaults(profile: str = "quick", **overrides) -> dict:
    """SV-NUP notebook settings for a workload profile; ``None`` overrides keep the default.
    ``game_metric='same'`` plays the layer game with the pruning solver's metric (the paper's
    setting); 'wanda' shares one game between solvers (cheaper: one Shapley run per sparsity)."""
    if profile not in _NOTEBOOK:
        raise PrunekitError(f"unknown profile '{profile}'; choose from {', '.join(_NOTEBOOK)}")
    out = dict(_NOTEBOOK[profile])
    out.update({k: v for k, v in overrides.items() if v is not None})
    return out


def compare_allocations(session, sparsities=(0.6, 0.7), metrics=("sparsegpt", "wanda"),
                        allocations=("uniform", "owl", "alphapruning", "svnup"), svnup_options: dict | None = None,
                        game_metric: str = "wanda"):
    """``Session.sweep`` of every (metric, allocation, sparsity); unregistered allocations are skipped
    (``df.attrs['skipped']``). SV-NUP plays its layer game with ``game_metric`` ('same': the solver's
    metric). Columns: metric, allocation, sparsity, global_sparsity, one perplexity column per
    evaluation dataset, seconds, shapley_evaluations; the SV-NUP plans' Shapley values are in
    ``df.attrs['shapley']`` keyed by 'metric@sparsity'."""
    import pandas as pd
    shap = {}

    def record(rec, row):
        if row["method"] == "svnup":
            shap[f"{row['metric']}@{row['sparsity']}"] = rec["plan_extras"]["shapley"]
            row["shapley_evaluations"] = rec["plan_extras"]["shapley_evaluations"]

    parts = []
    for metric in metrics:  # the game's metric may follow the solver's, so one sweep per metric
        base = metric if game_metric in (None, "same") else game_metric
        part = session.sweep(list(allocations), [metric], sparsities,
                             {"svnup": {**(svnup_options or {}), "base_metric": base}}, on_run=record)
        parts.append(part)
    skipped = parts[0].attrs["skipped"] if parts else []
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    df = df.drop(columns=["method", "planned", "allocate_s"], errors="ignore")
    df = df.rename(columns=lambda c: c[4:] if c.startswith("ppl_") else c)
    df.attrs.update(skipped=skipped, shapley=shap)
    return df
