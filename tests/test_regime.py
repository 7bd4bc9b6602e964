"""Degradation-matched sparsity s*: bisection against an analytic root and against a brute-force grid
on tiny-llama; the MRP score table against a direct pandas computation."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from conftest import needs_data, tiny_model
from prunekit.errors import PrunekitError
from prunekit.experiments import regime

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bisection_finds_the_analytic_root():
    # ratio(s) = exp(8 s²): the root of ratio = t is sqrt(ln t / 8)
    for t in (4.6, 15.1, 1.5):
        root = math.sqrt(math.log(t) / 8)
        res = regime.bisect_sparsity(lambda s: math.exp(8 * s * s), t, lo=0.5, hi=0.7, tol=0.01)
        assert res["lo"] <= root <= res["hi"]
        assert abs(res["s_star"] - root) <= 0.005 + 1e-9
        assert res["hi"] - res["lo"] == pytest.approx(0.01)
        curve = res["curve"]
        assert [p["sparsity"] for p in curve] == sorted(p["sparsity"] for p in curve)


def test_bisection_rejects_an_unreachable_target():
    with pytest.raises(PrunekitError, match="only"):
        regime.bisect_sparsity(lambda s: 1.0 + s, 100.0)
    with pytest.raises(PrunekitError, match="positive"):
        regime.bisect_sparsity(lambda s: 1.0 + s, -1.0)


class TinySession:
    """The two things find_s_star needs from a Session (run uniform, restore), on a tiny model."""
    calib_dataset = "synthetic"

    def __init__(self, model, calib):
        self.model, self.runtime, self.calib = model, model, calib
        self.dense = copy.deepcopy(model.state_dict())

    def run(self, allocation, metric, s, evaluate=False):
        from prunekit.allocation import allocate
        from prunekit.scoring.statistics import Statistics
        from prunekit.solvers.prune import prune_model
        self.restore()
        stats = Statistics(self.model, self.calib, cache=False, progress=False)
        prune_model(self.model, self.calib.input_ids, allocate(allocation, stats, s), metric, progress=False)

    def restore(self):
        self.model.load_state_dict(self.dense)


def _nll(model, ids) -> float:
    # independent of the code under test: mean next-token cross-entropy with torch's own loss
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    return float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                   ids[:, 1:].reshape(-1)))


def _self_sampled(model, n: int, seqlen: int, seed: int):
    """Tokens sampled from the dense model itself: a held-out set it predicts well, so pruning
    raises its NLL (on uniform random tokens a random model's NLL barely moves)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (n, 1), generator=g)
    with torch.no_grad():
        for _ in range(seqlen - 1):
            p = torch.softmax(model(input_ids=ids).logits[:, -1].float(), -1)
            ids = torch.cat([ids, torch.multinomial(p, 1, generator=g)], 1)
    return ids


def test_s_star_on_tiny_llama_matches_a_brute_force_grid():
    from prunekit.core.data import Calibration
    model = tiny_model("llama", layers=2, seed=3, initializer_range=0.2)
    ids = _self_sampled(model, 8, 32, seed=5)
    sess = TinySession(model, Calibration(ids[:4], "synthetic", 0, "0" * 64, [(-1, i) for i in range(4)]))
    ho = ids[4:]
    dense = _nll(model, ho)
    grid = np.round(np.arange(0.40, 0.701, 0.01), 2)
    ratios = []
    for s in grid:
        sess.run("uniform", "wanda", float(s))
        ratios.append(math.exp(_nll(model, ho) - dense))
    sess.restore()
    ratios = np.array(ratios)
    assert ratios[-1] > 2 * ratios[0]  # the damage rises with sparsity on this model
    for target in (float(np.interp(0.5, grid, ratios)), float(np.interp(0.63, grid, ratios))):
        # brute force: every grid step where the ratio goes from below the target to at or above it
        crossings = [grid[i] for i in range(1, len(grid)) if ratios[i - 1] < target <= ratios[i]]
        res = regime.find_s_star(sess, "wanda", ho, target=target, lo=0.45, hi=0.65, also=())
        # the bisection's final bracket is one of the brute-force grid's crossings, s* its midpoint
        assert res["hi"] in crossings and res["lo"] == pytest.approx(res["hi"] - 0.01)
        assert res["s_star"] == pytest.approx(res["hi"] - 0.005)
        curve = {p["sparsity"]: p["ratio"] for p in res["curve"]}
        assert curve[res["lo"]] < target <= curve[res["hi"]]
        for s, r in curve.items():  # every bisection point agrees with the independent evaluation
            i = int(np.argmin(abs(grid - s)))
            if abs(grid[i] - s) < 1e-9:
                assert r == pytest.approx(ratios[i], rel=1e-4)


def test_mrp_score_table_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    rows = [{"model": m, "seed": s, "sparsity": 0.7, "config": c, "heldout_nll": float(rng.normal(6, 1))}
            for m in ("a", "b") for s in range(3) for c in ("uniform", "mrp[score=solver]", "mrp[score=wanda]")]
    tab = regime.mrp_score_table(rows).set_index("model")
    for m in ("a", "b"):
        get = {(r["seed"], r["config"]): r["heldout_nll"] for r in rows if r["model"] == m}
        d = [get[(s, "mrp[score=wanda]")] - get[(s, "mrp[score=solver]")] for s in range(3)]
        assert tab.loc[m, "wanda_minus_solver"] == pytest.approx(sum(d) / 3)
        assert tab.loc[m, "wanda_better_seeds"] == sum(x < 0 for x in d)


@needs_data
def test_svnup_heldout_draws_share_no_document():
    from conftest import ByteTokenizer
    from prunekit.core.data import load_text
    from prunekit.experiments.svnup_heldout import doc_disjoint_draw
    tok = ByteTokenizer()
    used = set(range(0, 900, 2))  # every even document is taken
    a = doc_disjoint_draw("c4", tok, 3, 512, 1000, used)
    b = doc_disjoint_draw("c4", tok, 3, 512, 1001, used | {p[0] for p in a.picks})
    docs_a, docs_b = {p[0] for p in a.picks}, {p[0] for p in b.picks}
    assert len(docs_a) == len(docs_b) == 3 and not (docs_a & docs_b) and not ((docs_a | docs_b) & used)
    text = load_text("c4", "calib").docs
    for cal in (a, b):  # every window is the stated slice of its document (bytes = token ids here)
        for row, (d, start) in zip(cal.input_ids, cal.picks):
            assert bytes(row.tolist()) == text[d].encode("utf-8")[start:start + 512]


def _runs(rng, model, spars, allocs=("uniform", "owl"), seeds=3, windows=4):
    rows = []
    for s in spars:
        for a in allocs:
            for sd in range(seeds):
                nll = rng.normal(5 + s + 0.1 * (a == "owl"), 0.05, windows)
                rows.append({"model": model, "seed": sd, "allocation": a, "metric": "wanda", "sparsity": s,
                             "nll_wikitext2": nll.tolist(), "ppl_wikitext2": float(np.exp(nll.mean()))})
    return rows


def test_regime_matrix_reads_each_regime_from_its_own_runs():
    import pandas as pd
    rng = np.random.default_rng(0)
    df = pd.DataFrame(_runs(rng, "m", (0.7, 0.62)))
    mat = regime.regime_matrix(df, {"m": {"wanda": 0.62}}, n_boot=200)
    row = mat[mat["claim"].str.startswith("OWL + Wanda")].iloc[0]
    for col, s in (("m @ 70 %", 0.7), ("m @ s*", 0.62)):
        sel = df[np.isclose(df.sparsity, s)]
        a = np.stack(sel[sel.allocation == "owl"].sort_values("seed")["nll_wikitext2"].map(np.array))
        b = np.stack(sel[sel.allocation == "uniform"].sort_values("seed")["nll_wikitext2"].map(np.array))
        want = 100 * np.mean(np.exp(a.mean(1) - b.mean(1)) - 1)
        assert row[col].startswith(f"{want:+.1f} %")
    # claims not at 70 % (Wanda vs magnitude at 50 %) are not moved to s*
    assert all(c.sparsity == 0.62 for c in regime.claims_at({"wanda": 0.62}) if c.metric == "wanda")
    assert not [c for c in regime.claims_at({"wanda": 0.62}) if "magnitude" in c.text]


def test_cpu_minutes_sum_each_part_per_model_and_refuse_a_partial_sum():
    import pandas as pd

    from prunekit.experiments.comparison import cpu_minutes
    rng = np.random.default_rng(4)
    runs = pd.DataFrame({"model": ["a"] * 4 + ["b"] * 3, "cpu_seconds": rng.uniform(10, 100, 7)})
    at_s = pd.DataFrame({"model": ["a", "a", "b"], "cpu_seconds": [30.0, 60.0, float("nan")]})
    acc = [{"model": "a", "zero_shot_cpu_s": 120.0}, {"model": "a", "zero_shot_cpu_s": 60.0},
           {"model": "b", "zero_shot_cpu_s": 6.0}]
    t = cpu_minutes(runs, at_s, acc).set_index("model")
    grid_a = runs["cpu_seconds"][:4].sum() / 60
    assert t.loc["a", "grid runs"] == pytest.approx(grid_a) and t.loc["a", "s* runs"] == pytest.approx(1.5)
    assert t.loc["a", "perplexity part"] == pytest.approx(grid_a + 1.5) and t.loc["a", "zero-shot part"] == 3.0
    assert np.isnan(t.loc["b", "s* runs"]) and np.isnan(t.loc["b", "perplexity part"])  # one run without a time
    assert t.loc["b", "zero-shot part"] == pytest.approx(0.1)
    bare = cpu_minutes(runs.drop(columns="cpu_seconds"))  # an old results file: no CPU times at all
    assert bare["grid runs"].isna().all() and list(bare.columns) == ["model", "grid runs", "perplexity part"]
