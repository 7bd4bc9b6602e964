"""MRP's findings as measurements (prunekit/experiments/mrp_findings.py, docs/methods.md §1): LPS
against a full forward pass of a pruned copy, the fragile block ranked first, seeded random plans."""
import numpy as np
import pytest
import torch
from conftest import tiny_calib, tiny_model

from prunekit.core.architectures import layout
from prunekit.evaluation.perplexity import window_nlls
from prunekit.experiments import mrp_findings as analysis
from prunekit.scoring.statistics import Statistics
from prunekit.solvers.prune import prune_model

pytestmark = pytest.mark.usefixtures("one_thread")  # shared fixture in conftest


@torch.no_grad()
def fragile_model(block):
    """Sharp head (lm_head ×30) and one block whose residual writes (o_proj, down_proj) are ×20: its
    output dominates the residual stream, so pruning it moves the logits most."""
    model = tiny_model(seed=3)
    lay = layout(model)
    model.lm_head.weight.mul_(30)
    lay.blocks[block].self_attn.o_proj.weight.mul_(20)
    lay.blocks[block].mlp.down_proj.weight.mul_(20)
    return model


@torch.no_grad()
def greedy_ids(model, n=4, seqlen=16, seed=0):
    """Evaluation text = the dense model's own greedy continuations, so the dense model sits at a
    low loss and damage shows up as a loss increase (a random model has no "correct" text)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (n, 1), generator=g)
    for _ in range(seqlen - 1):
        ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    return ids


@pytest.mark.parametrize("block,metric", [(1, "wanda"), (2, "magnitude")])
def test_lps_ranks_fragile_block_first(block, metric):
    model = fragile_model(block)
    stats = Statistics(model, tiny_calib(n=4, seqlen=16), cache=False, progress=False)
    res = analysis.layer_sensitivity(stats, metric, (0.5, 0.8), eval_ids=greedy_ids(model), progress=False)
    for s in (0.5, 0.8):
        v = res.vector(s)
        assert int(np.argmax(v)) == block, v
    assert res.cv.loc[0.8] > 0.5
    assert "non-uniform" in analysis.lps_verdict(res, 0.8)


@pytest.mark.parametrize("metric", ["wanda", "sparsegpt", "magnitude"])
def test_lps_equals_full_forward_of_pruned_model(metric):
    """LPS(l, s) = NLL(model with only block l pruned by prune_model) - NLL(dense), full forward."""
    model = tiny_model(seed=5)
    cal, ev = tiny_calib(n=4, seqlen=16, seed=0), tiny_calib(n=3, seqlen=16, seed=9)
    stats = Statistics(model, cal, cache=False, progress=False)
    res = analysis.layer_sensitivity(stats, metric, (0.6,), eval_ids=ev.input_ids, blocks=[1, 3], progress=False)
    dense_w = {k: v.weight.detach().clone() for k, v in model.named_modules() if isinstance(v, torch.nn.Linear)}
    stream = ev.input_ids.reshape(1, -1)
    base = float(window_nlls(model, stream, 16, progress=False).mean())
    assert abs(res.base_loss - base) < 1e-5
    for blk in (1, 3):
        plan = np.zeros(layout(model).num_blocks)
        plan[blk] = 0.6
        prune_model(model, cal.input_ids, plan, metric, progress=False)
        want = float(window_nlls(model, stream, 16, progress=False).mean()) - base
        got = res.table[(res.table.block == blk)].lps.item()
        assert abs(got - want) < 1e-4, (blk, got, want)
        with torch.no_grad():
            for k, v in model.named_modules():
                if k in dense_w:
                    v.weight.copy_(dense_w[k])


def test_random_allocations_budget_exact_and_seeded():
    sizes = np.array([[10, 20]] * 6, dtype=float)
    a = analysis.random_allocations(sizes, 0.6, 5, seed=3)
    b = analysis.random_allocations(sizes, 0.6, 5, seed=3)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
        assert abs((u * sizes.sum(1)).sum() / sizes.sum() - 0.6) < 1e-9
        assert (u >= 0).all() and (u <= 0.95).all()
    assert np.std([u.std() for u in a]) > 0  # a range of non-uniformities


class _FakeSession:
    """The part of ``Session`` that ``compare_mrp_variants`` uses: ``sweep`` prunes the tiny model
    with Wanda at each sparsity and hands the pruned model to ``on_run``."""

    def __init__(self, stats):
        self.stats, self.model, self.eval_datasets = stats, stats.model, ["synthetic"]
        self.runtime = stats.rt
        self._dense = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def restore(self):
        self.model.load_state_dict(self._dense)

    def sweep(self, variants, metrics, sparsities, on_run=None):
        import pandas as pd
        rows = []
        for label in variants:
            for mt in metrics:
                for s in sparsities:
                    self.restore()
                    prune_model(self.model, self.stats.calib.input_ids, s, mt, progress=False)
                    row = {"allocation": label, "method": variants[label][0], "metric": mt, "sparsity": s}
                    on_run({"perplexity": {"synthetic": 1.0}, "planned_sparsity": [s] * self.stats.num_blocks,
                            "allocation_options": {}}, row)
                    rows.append(row)
        self.restore()
        return pd.DataFrame(rows)


@pytest.mark.parametrize("reading", analysis.MEASURES)
def test_compare_mrp_variants_measures_after_with_the_reading_it_is_given(reading):
    """The "after" column (nor) uses the reading passed as ``measure``, like the "before" column;
    the two readings give different values on the pruned model, so a mix-up shows."""
    model = tiny_model(seed=2)
    stats = Statistics(model, tiny_calib(n=2, seqlen=16), cache=False, progress=False)
    session = _FakeSession(stats)
    m = 3.0
    masks = analysis.nonoutlier_masks(stats, "wanda", m)
    prune_model(model, stats.calib.input_ids, 0.6, "wanda", progress=False)
    want = {"current": analysis.current_redundancy(stats, "wanda", m),
            "frozen": analysis.measured_redundancy(model, masks, "surviving")}
    assert np.abs(want["current"] - want["frozen"]).max() > 1e-3  # the readings are distinguishable
    session.restore()
    df = analysis.compare_mrp_variants(session, {"u": ("uniform", {})}, ("wanda",), (0.6,), m=m, measure=reading)
    np.testing.assert_allclose(df["nor"].iloc[0], want[reading], atol=1e-12)
