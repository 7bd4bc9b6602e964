"""SV-NUP progress: the coalition bar counts the block forwards the layer game will really run, so its
ETA holds although, in trie order, late coalitions re-run more blocks than early ones."""
from __future__ import annotations

import pytest
from conftest import tiny_calib, tiny_model

import prunekit.allocation.svnup.shapley as shapley
from prunekit.allocation.svnup.game import LayerGame
from prunekit.allocation.svnup.shapley import _Memo, sliding_window

pytestmark = pytest.mark.usefixtures("one_thread")


def _game(kind):
    model = tiny_model("llama", layers=6, seed=1)
    calib, held = tiny_calib(n=2, seqlen=16, seed=0), tiny_calib(n=2, seqlen=12, seed=1)
    return LayerGame(model, calib.input_ids, held, 0.6, "magnitude", kind, batch_size=2, progress=False)


@pytest.mark.parametrize("kind", ["dense_coalition", "pruned_coalition"])
def test_evaluation_costs_equal_the_blocks_each_coalition_runs(kind):
    with _game(kind) as g:
        memo = _Memo(g, g.n)
        masks = sorted({(bg | s << lo) & g.full for bg in (0, g.full) for lo in range(g.n - 2) for s in range(8)},
                       key=memo.trie_key)
        costs = g.evaluation_costs(masks)
        assert max(costs) == g.n and min(costs) < g.n  # some coalitions reuse a prefix, the first does not
        for m, c in zip(masks, costs):
            before = g.blocks_run
            g(m)
            assert g.blocks_run - before == c, (bin(m), c)
        assert g.evaluation_costs(masks) == [0] * len(masks)  # values cached: nothing to run
        g.value_cache.clear()  # hidden states still cached: the first coalition resumes from them
        first = g.evaluation_costs(masks[:1])[0]
        before = g.blocks_run
        g(masks[0])
        assert g.blocks_run - before == first < g.n


class _Bar:
    made = []

    def __init__(self, total=None, **kw):
        self.total, self.unit, self.done = total, kw.get("unit"), 0
        _Bar.made.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, k):
        self.done += k


def test_sliding_window_bar_total_is_the_block_forwards_spent(monkeypatch):
    monkeypatch.setattr(shapley, "tqdm", _Bar)
    _Bar.made.clear()
    with _game("dense_coalition") as g:
        r = sliding_window(g, g.n, 3, background="both")
        (bar,) = _Bar.made
        assert bar.unit == "block" and bar.total == bar.done == g.blocks_run
        assert r.evaluations == g.forwards
    # a plain callable has no cost model: the bar counts coalitions
    _Bar.made.clear()
    r = sliding_window(lambda m: float(bin(m).count("1")), 5, 3)
    assert _Bar.made[0].unit == "coalition" and _Bar.made[0].total == r.evaluations


def test_costs_stay_exact_when_the_state_cache_holds_only_one_coalition_path():
    """The cost model assumes each coalition finds the previous one's prefix states. With a budget of
    exactly one path (n - 1 states) a plain LRU evicts the shallow prefixes the trie walk returns to;
    refreshing the path on every read keeps it, so every coalition runs exactly its modelled blocks."""
    with _game("dense_coalition") as g:
        size = sum(h.numel() * h.element_size() for h in g._inputs.hidden)
        g._state_budget = (g.n - 1) * size
        memo = _Memo(g, g.n)
        masks = sorted({(bg | s << lo) & g.full for bg in (0, g.full) for lo in range(g.n - 2) for s in range(8)},
                       key=memo.trie_key)
        costs = g.evaluation_costs(masks)
        ran = []
        for m in masks:
            before = g.blocks_run
            g(m)
            ran.append(g.blocks_run - before)
        assert g._state_bytes <= g._state_budget
        assert ran == costs
