"""Reproduction-table verdicts (prunekit/experiments/comparison.py) on synthetic sweeps with known outcomes."""
import numpy as np
import pandas as pd

import itertools

import pytest

from prunekit.experiments.comparison import (CLAIMS, configurations, paired_bootstrap, reproduction_matrix,
                                             reproduction_table, summarise, verdict)


def _df(ppl_owl, ppl_uniform):
    rows = []
    for seed, (o, u) in enumerate(zip(ppl_owl, ppl_uniform)):
        rows += [{"seed": seed, "allocation": "owl", "metric": "wanda", "sparsity": 0.7, "ppl_wikitext2": o},
                 {"seed": seed, "allocation": "uniform", "metric": "wanda", "sparsity": 0.7, "ppl_wikitext2": u}]
    return pd.DataFrame(rows)


def _verdict(df, paper="OWL", metric="wanda"):
    t = reproduction_table(df, [c for c in CLAIMS if c.paper == paper and c.metric == metric])
    return t.iloc[0]


def test_clear_improvement_is_reproduced_with_measured_change():
    r = _verdict(_df([50, 52, 48], [100, 101, 99]))
    assert r.verdict == "reproduced"
    expected = np.mean([50 / 100 - 1, 52 / 101 - 1, 48 / 99 - 1]) * 100
    assert abs(r["measured_change_%"] - expected) < 1e-9 and r.seeds == 3


def test_opposite_sign_is_contradicted_and_noise_is_inconclusive():
    assert _verdict(_df([120, 121, 119], [100, 101, 99])).verdict == "contradicted"
    assert _verdict(_df([90, 110, 101], [100, 100, 100])).verdict.startswith("inconclusive")
    assert _verdict(_df([50], [100])).verdict.startswith("inconclusive")  # one seed: no spread


def test_missing_method_is_reported_not_measured():
    r = _verdict(_df([50, 52], [100, 101]), paper="SV-NUP", metric="sparsegpt")
    assert r.verdict.startswith("not measured")


def test_best_of_several_baselines():
    rows = []
    for seed in range(3):
        for a, p in (("mrp", 40 + seed), ("owl", 50), ("alphapruning", 45)):
            rows.append({"seed": seed, "allocation": a, "metric": "wanda", "sparsity": 0.7, "ppl_wikitext2": p})
    r = _verdict(pd.DataFrame(rows), paper="MRP")
    assert r.verdict == "reproduced"
    assert abs(r["measured_change_%"] - 100 * np.mean([40 / 45 - 1, 41 / 45 - 1, 42 / 45 - 1])) < 1e-9


def test_summary_and_configurations():
    s = summarise(_df([50, 52, 48], [100, 101, 99]))
    row = s[s.allocation == "owl"].iloc[0]
    assert row.ppl_wikitext2_mean == 50 and row.seeds == 3 and abs(row.ppl_wikitext2_std - 2) < 1e-12
    labels = [c[0] for c in configurations({"uniform": "", "owl": "", "absorption": ""})]
    assert labels == ["uniform", "owl", "absorption(owl)"]


def test_bootstrap_interval_equals_hand_enumeration():
    """2 seeds × 2 windows: the two-stage resample has 4 × 4 equally likely outcomes, each with
    probability 1/16 > 2.5 %, so the 95 % percentile interval is [min, max] of the 16 statistics,
    enumerated here by hand; the point estimate is the formula on the data."""
    a = np.array([[2.0, 2.4], [2.1, 2.9]])
    b = np.array([[2.2, 2.3], [2.6, 2.5]])
    vals = []
    for si in itertools.product(range(2), repeat=2):
        for wi in itertools.product(range(2), repeat=2):
            d = [np.exp(np.mean([a[s, w] for w in wi]) - np.mean([b[s, w] for w in wi])) - 1 for s in si]
            vals.append(np.mean(d))
    out = paired_bootstrap(a, b, n_boot=4000, seed=1)
    point = np.mean([np.exp(a[s].mean() - b[s].mean()) - 1 for s in range(2)])
    assert out["mean"] == pytest.approx(point, abs=1e-12)
    assert out["lo"] == pytest.approx(min(vals), abs=1e-12) and out["hi"] == pytest.approx(max(vals), abs=1e-12)
    assert (out["seeds"], out["windows"]) == (2, 2)


def test_bootstrap_best_of_baselines_per_replicate():
    """With two baselines the statistic takes the lower-NLL one per seed and replicate: an
    identical copy of A among the baselines caps Δ at 0 in every replicate."""
    rng = np.random.default_rng(0)
    a = rng.normal(3, 0.2, (3, 8))
    worse = a + 0.5
    out = paired_bootstrap(a, np.stack([worse, a]), n_boot=500)
    assert max(abs(out["mean"]), abs(out["lo"]), abs(out["hi"])) < 1e-12
    out = paired_bootstrap(a, worse, n_boot=500)
    assert out["hi"] < 0 and out["mean"] == pytest.approx(np.expm1(-0.5), abs=1e-12)


def test_verdict_from_interval():
    assert verdict(-0.3, -0.1) == "reproduced" and verdict(0.1, 0.3) == "contradicted"
    assert verdict(-0.1, 0.2).startswith("inconclusive")
    assert verdict(0.1, 0.3, expect=1.0) == "reproduced"


def test_per_window_nlls_and_model_columns():
    rows = []
    for model, shift in (("m1", -0.3), ("m2", 0.0)):
        for seed in range(3):
            base = 4.0 + 0.1 * np.arange(6) + 0.05 * seed
            rows += [{"model": model, "seed": seed, "allocation": "owl", "metric": "wanda", "sparsity": 0.7,
                      "nll_wikitext2": list(base + shift), "ppl_wikitext2": float(np.exp((base + shift).mean()))},
                     {"model": model, "seed": seed, "allocation": "uniform", "metric": "wanda", "sparsity": 0.7,
                      "nll_wikitext2": list(base), "ppl_wikitext2": float(np.exp(base.mean()))}]
    t = reproduction_table(pd.DataFrame(rows), [c for c in CLAIMS if c.paper == "OWL" and c.metric == "wanda"])
    r1, r2 = t[t.model == "m1"].iloc[0], t[t.model == "m2"].iloc[0]
    assert r1.verdict == "reproduced" and r1.windows == 6 and r1.seeds == 3
    assert r1["measured_change_%"] == pytest.approx(100 * np.expm1(-0.3), abs=1e-9)
    assert r2.verdict.startswith("inconclusive")
    m = reproduction_matrix(t)
    assert list(m.columns[-2:]) == ["m1", "m2"] and "reproduced" in m["m1"].iloc[0]


def test_matrix_one_row_per_claim_even_without_paper_number():
    rows = [{"model": m, "seed": 0, "allocation": a, "metric": "wanda", "sparsity": 0.7, "ppl_wikitext2": p}
            for m in ("m1", "m2") for a, p in (("mrp", 40), ("owl", 50), ("alphapruning", 45), ("uniform", 60))]
    t = reproduction_table(pd.DataFrame(rows))
    m = reproduction_matrix(t)
    assert len(m) == len(CLAIMS) and list(m.columns) == ["paper", "claim", "paper_change_%", "m1", "m2"]
