"""Reproduction-table verdicts (prunekit/experiments/comparison.py) on synthetic sweeps with known outcomes."""
import numpy as np
import pandas as pd

from prunekit.experiments.comparison import CLAIMS, configurations, reproduction_table, summarise


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


def test_opposite_sign_is_not_reproduced_and_noise_is_inconclusive():
    assert _verdict(_df([120, 121, 119], [100, 101, 99])).verdict == "not reproduced"
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
