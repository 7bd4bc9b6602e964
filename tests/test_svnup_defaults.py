"""SV-NUP default estimator: the sliding window with background 'both' is the mean of the
window's exact Shapley values over the two backgrounds (brute force on a synthetic game), and its
progress bar knows its total up front (ETA)."""
from __future__ import annotations

import numpy as np

from prunekit.allocation import spec
from prunekit.allocation.svnup.shapley import sliding_window


def _game(n, seed=0):
    rng = np.random.default_rng(seed)
    a, B = rng.normal(size=n), rng.normal(size=(n, n)) * 0.3
    calls = []

    def v(mask):
        calls.append(mask)
        x = np.array([mask >> i & 1 for i in range(n)], dtype=float)
        return float(a @ x + x @ B @ x)
    return v, calls


def _window_shapley(v, n, players, bg):
    """Exact Shapley of each window player in the sub-game with the others fixed at ``bg``."""
    import itertools
    import math
    m, phi = len(players), {}
    for p in players:
        others = [q for q in players if q != p]
        tot = 0.0
        for k in range(m):
            for C in itertools.combinations(others, k):
                base = bg
                for q in players:
                    base &= ~(1 << q)
                for q in C:
                    base |= 1 << q
                w = math.factorial(k) * math.factorial(m - k - 1) / math.factorial(m)
                tot += w * (v(base | (1 << p)) - v(base))
        phi[p] = tot
    return phi


def test_default_estimator_against_brute_force():
    d = {k: o.default for k, o in spec("svnup").options.items()}
    assert d["estimator"] == "sliding_window" and d["background"] == "both"
    n, w = 9, d["window"]
    v, _ = _game(n)
    r = sliding_window(v, n, w, background=d["background"])
    full = (1 << n) - 1
    for l in range(n):
        lo = min(max(l - (w - 1) // 2, 0), n - w)
        players = list(range(lo, lo + w))
        want = 0.5 * (_window_shapley(v, n, players, 0)[l] + _window_shapley(v, n, players, full)[l])
        assert abs(r.values[l] - want) < 1e-9, l
