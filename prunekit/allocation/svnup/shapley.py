"""Shapley estimators with one interface ``fn(v, n, ...) -> ShapleyResult`` (docs/methods.md §2): exact, Monte-Carlo, sliding window."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from prunekit.utils import tqdm

from prunekit.utils import bars_disabled
from prunekit.errors import PrunekitError

EXACT_MAX_PLAYERS = 16
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
        # The bar's total is known up front, so tqdm shows an ETA. A prefix-caching game (LayerGame)
        # says how many blocks each coalition will run in this order: in trie order the late
        # coalitions differ in early blocks and cost several times the early ones, so counting
        # coalitions would promise an ETA a fraction of the real one.
        cost_of = getattr(self.v, "evaluation_costs", None)
        costs, unit = (cost_of(todo), "block") if cost_of is not None else ([1] * len(todo), "coalition")
        with tqdm(total=sum(costs), desc=desc, unit=unit, disable=bars_disabled(progress), leave=False) as bar:
            for m, c in zip(todo, costs):
                self(m)
                bar.update(c)

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
    for k in tqdm(range(1, n_permutations + 1), desc="Monte-Carlo Shapley", disable=bars_disabled(progress), leave=False):
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
    """Sliding-window Shapley (SWSV, docs/methods.md §2 [I]): φ_l = exact Shapley value of l in the
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


SHAPLEY_ESTIMATORS = {"exact": exact, "monte_carlo": monte_carlo, "sliding_window": sliding_window}


def estimate(v: Callable, n: int, estimator: str = "sliding_window", **options) -> ShapleyResult:
    """Dispatch to a named estimator (``exact``, ``monte_carlo``, ``sliding_window``)."""
    if estimator not in SHAPLEY_ESTIMATORS:
        raise PrunekitError(f"unknown Shapley estimator '{estimator}'; choose from {', '.join(SHAPLEY_ESTIMATORS)}")
    return SHAPLEY_ESTIMATORS[estimator](v, n, **options)
