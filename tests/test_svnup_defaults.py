"""SV-NUP default estimator: sliding window w=1 with the other players present = leave-one-out
marginals, n+1 distinct coalitions; a progress bar whose total is known up front (ETA)."""
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


def test_default_is_leave_one_out_with_n_plus_one_evaluations():
    d = {k: o.default for k, o in spec("svnup").options.items()}
    assert d["estimator"] == "sliding_window"
    n = 9
    v, calls = _game(n)
    r = sliding_window(v, n, d["window"], background=d["background"])
    full = (1 << n) - 1
    brute = np.array([v(full) - v(full & ~(1 << i)) for i in range(n)])  # v(N) - v(N \\ {i})
    assert np.allclose(r.values, brute, atol=1e-12)
    assert r.evaluations == n + 1


def test_progress_total_is_known_up_front(monkeypatch):
    import prunekit.allocation.svnup.shapley as sh
    seen = {}

    class Bar(list):
        def __init__(self, it, **kw):
            super().__init__(it)
            seen.update(kw, total=len(self))

    monkeypatch.setattr(sh, "tqdm", Bar)
    v, _ = _game(6)
    sh.sliding_window(v, 6, 1, background="present", progress=True)
    assert seen["total"] == 7 and seen["unit"] == "coalition"
