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


def test_default_heldout_is_eight_windows_of_at_most_512_tokens(byte_tokenizer):
    """The default value set: 8 documents' windows of 512 tokens, or of the calibration length if
    shorter (the draw agreement follows the number of documents); never a pruning window."""
    from types import SimpleNamespace

    from prunekit.allocation.svnup.game import heldout_data
    from prunekit.core.data import calibration_data
    n = spec("svnup").options["heldout_samples"].default
    assert n == 8 and spec("svnup").options["heldout_seqlen"].default is None
    for calib_len, want in ((32, 32), (1024, 512)):
        calib = calibration_data("c4", byte_tokenizer, 2, calib_len, seed=3)
        held = heldout_data(SimpleNamespace(calib=calib, tokenizer=byte_tokenizer), n)
        assert tuple(held.input_ids.shape) == (8, want)
        assert not {tuple(p) for p in held.picks} & {tuple(p) for p in calib.picks}
    assert heldout_data(SimpleNamespace(calib=calib, tokenizer=byte_tokenizer), 2, 100).input_ids.shape[1] == 100
