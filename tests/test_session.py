"""Session.sweep (prunekit/experiments/session.py), the one experiment loop behind every notebook table: each run starts from the
dense model, seeds redraw calibration, and unregistered methods are skipped, not faked."""
from __future__ import annotations

import math

import pytest
from conftest import ByteTokenizer, needs_data, tiny_model

pytestmark = [pytest.mark.usefixtures("one_thread"),
              needs_data]

KW = dict(calib_samples=4, calib_seqlen=32, eval_seqlen=64, eval_windows=2, batch_size=4, progress=False)


def session(seed=0):
    from prunekit.experiments.session import Session
    from prunekit.core.runtime import Runtime
    return Session(model_name="tiny", runtime=Runtime(tiny_model("llama"), ByteTokenizer(), name="tiny"), seed=seed,
                   **KW)


def fresh_ppl(allocation, metric, sparsity, seed=0):
    """Independent reference: a new session on a new copy of the model, one run."""
    return session(seed).run(allocation, metric, sparsity)["perplexity"]["wikitext2"]


def test_sweep_rows_equal_independent_runs_and_skip_unknown():
    S = session()
    seen = []
    df = S.sweep(["uniform", "owl", "no_such_method"], ["magnitude", "wanda"], [0.5, 0.7],
                 on_run=lambda rec, row: seen.append((row["allocation"], row["metric"], row["sparsity"])))
    assert df.attrs["skipped"] == ["no_such_method"]
    assert len(df) == 2 * 2 * 2 and len(seen) == 8
    assert set(df.allocation) == {"uniform", "owl"}
    for r in df.itertuples():
        assert abs(r.global_sparsity - r.sparsity) <= 0.5 / 64 + 1e-6  # half a weight per row of >= 64
    # the last run of the sweep and one from the middle equal fresh single runs (dense restored between)
    for alloc, metric, s in [("owl", "wanda", 0.7), ("uniform", "magnitude", 0.5)]:
        got = df[(df.allocation == alloc) & (df.metric == metric) & (df.sparsity == s)].ppl_wikitext2.iloc[0]
        assert math.isclose(got, fresh_ppl(alloc, metric, s),
                            rel_tol=1e-5)


def test_sweep_variants_and_seeds():
    S = session()
    variants = {"owl-small": ("owl", {"lam": 0.02}), "owl-large": ("owl", {"lam": 0.1})}
    df = S.sweep(variants, ["wanda"], [0.6], seeds=[0, 1])
    assert list(df.seed) == [0, 0, 1, 1] and list(df.method) == ["owl"] * 4
    spread = {r.allocation: max(r.planned) - min(r.planned) for r in df[df.seed == 0].itertuples()}
    assert spread["owl-small"] < spread["owl-large"]
    # seed 1 rows equal a session built with seed 1 from the start
    got = df[(df.seed == 1) & (df.allocation == "owl-large")].ppl_wikitext2.iloc[0]
    ref = session(seed=1).run("owl", "wanda", 0.6, lam=0.1)["perplexity"]["wikitext2"]
    assert math.isclose(got, ref, rel_tol=1e-5)
    g0 = df[(df.seed == 0) & (df.allocation == "owl-large")].ppl_wikitext2.iloc[0]
    assert g0 != got  # a different calibration set prunes differently


def test_solver_score_reaches_metric_dependent_bases():
    """MRP principle 2: the solver's metric scores the allocation, also inside the absorption wrapper."""
    import numpy as np
    S = session()
    rec = S.run("absorption", "magnitude", 0.6, base="mrp", gamma=0.0, base_options={"delta": 0.02})
    assert rec["allocation_options"]["base_options"] == {"delta": 0.02, "score": "magnitude"}
    np.testing.assert_allclose(rec["planned_sparsity"], S.plan("mrp", 0.6, delta=0.02, score="magnitude").per_block,
                               atol=1e-12)
    own = S.run("absorption", "magnitude", 0.6, base="mrp", gamma=0.0, base_options={"delta": 0.02, "score": "wanda"})
    assert own["allocation_options"]["base_options"]["score"] == "wanda"  # an explicit choice wins
    owl = S.run("absorption", "magnitude", 0.6, base="owl", gamma=0.0)
    assert "score" not in owl["allocation_options"]["base_options"]  # OWL has no score option
