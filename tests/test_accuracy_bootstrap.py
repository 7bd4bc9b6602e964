"""The paired accuracy bootstrap over examples × seeds against independent computations."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from prunekit.errors import PrunekitError
from prunekit.experiments.accuracy import accuracy_bootstrap, examples_needed


def _pair(rng, S, N, p_a=0.6, flip=0.2):
    a = (rng.random((S, N)) < p_a).astype(float)
    b = np.where(rng.random((S, N)) < flip, 1 - a, a)  # B disagrees with A on a fraction `flip`
    return a, b


def test_one_seed_one_task_matches_scipy_paired_percentile_bootstrap():
    rng = np.random.default_rng(1)
    a, b = _pair(rng, 1, 600)
    ours = accuracy_bootstrap(a, b, ["t"] * 600, n_boot=8000, seed=0)
    d = a[0] - b[0]
    ref = stats.bootstrap((d,), np.mean, n_resamples=8000, method="percentile", confidence_level=0.95,
                          rng=np.random.default_rng(7)).confidence_interval
    assert ours["mean"] == pytest.approx(100 * d.mean())
    assert ours["lo"] == pytest.approx(100 * ref.low, abs=0.35)
    assert ours["hi"] == pytest.approx(100 * ref.high, abs=0.35)


def test_point_estimate_is_the_mean_over_seeds_of_task_mean_accuracy_differences():
    rng = np.random.default_rng(2)
    tasks = np.array(["x"] * 50 + ["y"] * 200 + ["z"] * 30)
    a, b1 = _pair(rng, 3, len(tasks))
    _, b2 = _pair(rng, 3, len(tasks))
    res = accuracy_bootstrap(a, np.stack([b1, b2]), tasks, n_boot=200)
    want = []
    for s in range(3):  # loops, not the vectorised code: per seed, task means, best baseline
        acc = lambda x: np.mean([x[s][tasks == t].mean() for t in ("x", "y", "z")])  # noqa: B023
        want.append(acc(a) - max(acc(b1), acc(b2)))
    assert res["mean"] == pytest.approx(100 * np.mean(want))
    assert res["lo"] <= res["mean"] <= res["hi"]


def test_interval_width_matches_the_normal_approximation_over_examples():
    # many examples, one task, identical seeds: the half-width is ≈ 1.96 · sd(d) / sqrt(N)
    rng = np.random.default_rng(3)
    a1, b1 = _pair(rng, 1, 4000)
    a, b = np.repeat(a1, 3, 0), np.repeat(b1, 3, 0)
    res = accuracy_bootstrap(a, b, ["t"] * 4000, n_boot=4000)
    d = a1[0] - b1[0]
    half = 100 * 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    assert (res["hi"] - res["lo"]) / 2 == pytest.approx(half, rel=0.1)


def test_examples_needed_and_bad_input():
    # ± 1 point at 20 % disagreement over 3 seeds: 0.2 · 196² / 3
    assert examples_needed(0.2, 3) == int(np.ceil(0.2 * 196 ** 2 / 3))
    with pytest.raises(PrunekitError):
        accuracy_bootstrap(np.zeros((2, 5)), np.zeros((2, 4)), ["t"] * 5)
    with pytest.raises(PrunekitError):
        examples_needed(0.0, 3)


# ---------------------------------------------------------------- the accuracy column from run records

TASKS = ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")


def _records(rng, labels, seeds, sizes, model="m", sp=0.66, p=0.5):
    recs = []
    for lab in labels:
        for s in seeds:
            tasks = {t: {"per_example_acc": (rng.random(n) < p).astype(float).tolist()} for t, n in zip(TASKS, sizes)}
            for v in tasks.values():
                v["acc"] = float(np.mean(v["per_example_acc"]))
            recs.append({"key": f"{model}|{lab}|{s}", "model": model, "label": lab, "sparsity": sp, "seed": s,
                         "limit": max(sizes), "tasks": tasks, "mean_acc": float(np.mean([v["acc"] for v in tasks.values()])),
                         "zero_shot_cpu_s": 1.0})
    return recs


def test_accuracy_table_point_estimates_match_a_loop_over_the_records():
    from prunekit.experiments.accuracy import ACCURACY_CLAIMS, accuracy_table
    rng = np.random.default_rng(3)
    labels = ["mrp", "owl", "alphapruning", "absorption(owl)", "absorption(alphapruning)"]
    recs = _records(rng, labels, [0, 1, 2], [40, 20, 50, 30, 25, 15, 35])
    recs = [r for r in recs if not (r["label"] == "alphapruning" and r["seed"] == 2)]  # a missing run
    rows = {r["a"]: r for r in accuracy_table(recs, n_boot=300)}
    assert set(rows) == {a for _, a, _, _ in ACCURACY_CLAIMS}
    get = {(r["label"], r["seed"]): r for r in recs}
    for _, a, bs, _ in ACCURACY_CLAIMS:
        seeds = [s for s in (0, 1, 2) if all((x, s) in get for x in (a, *bs))]
        want = np.mean([get[a, s]["mean_acc"] - max(get[b, s]["mean_acc"] for b in bs) for s in seeds])
        assert rows[a]["seeds"] == len(seeds)
        assert rows[a]["mean"] == pytest.approx(100 * want)
        assert rows[a]["examples"] == 215
        assert rows[a]["lo"] <= rows[a]["mean"] <= rows[a]["hi"]
        v = rows[a]["verdict"]
        assert v == ("reproduced" if rows[a]["lo"] > 0 else "contradicted" if rows[a]["hi"] < 0 else "inconclusive")


def test_kept_bit_strings_read_back_as_the_same_correctness():
    from prunekit.experiments.accuracy import _bits, as_bits
    x = np.random.default_rng(4).integers(0, 2, 97).astype(float)
    assert np.array_equal(_bits(as_bits(x.tolist())), x)
    with pytest.raises(PrunekitError):
        as_bits([0.0, 0.5])


def test_regime_doc_accuracy_section_reads_the_accuracy_files(tmp_path):
    import json

    from prunekit.experiments.accuracy import accuracy_table
    from prunekit.reporting import regime_doc
    from prunekit.reporting.results import results_document
    from prunekit.reporting.results_doc import GENERATORS
    rng = np.random.default_rng(5)
    recs = _records(rng, ["mrp", "owl", "alphapruning"], [0, 1], [12] * 7)
    (tmp_path / "accuracy_a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs[:3]))
    (tmp_path / "accuracy_b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs[3:]))
    res = results_document("regime", regime_doc.collect(tmp_path), profile="cpu", summary="")
    text = GENERATORS["regime"](res)
    row = accuracy_table(recs)[0]
    assert f"{row['mean']:+.2f} [{row['lo']:+.2f}, {row['hi']:+.2f}]" in text
    # a second sparsity beside s*: its own rows, and only the s* rows are marked as s*
    low = [{**r, "key": r["key"] + "|0.5", "sparsity": 0.5} for r in _records(rng, ["mrp", "owl", "alphapruning"],
                                                                                [0, 1], [12] * 7)]
    (tmp_path / "accuracy_low.jsonl").write_text("".join(json.dumps(r) + "\n" for r in low))
    curve = [{"sparsity": x, "ratio": 10 * x, "nll": 1.0, "seconds": 1.0} for x in (0.6, 0.66, 0.7)]
    (tmp_path / "sstar.json").write_text(json.dumps({"entries": {"m|wanda|seed0|default": {
        "settings": {"model": "m", "metric": "wanda", "dtype": "torch.bfloat16"}, "s_star": 0.66, "lo": 0.655,
        "hi": 0.665, "target": 6.6, "curve": curve}}}))
    text = GENERATORS["regime"](results_document("regime", regime_doc.collect(tmp_path), profile="cpu", summary=""))
    claim_rows = [ln for ln in text.splitlines() if ln.startswith("| m ") and "MRP" in ln]
    assert sorted(ln.split("|")[2].strip() for ln in claim_rows) == ["0.500", "0.660 (s*)"]
    low_row = accuracy_table(low)[0]
    assert f"{low_row['mean']:+.2f} [{low_row['lo']:+.2f}, {low_row['hi']:+.2f}]" in text
    (tmp_path / "accuracy_low.jsonl").unlink()
    (tmp_path / "accuracy_c.jsonl").write_text(json.dumps(recs[0]) + "\n")
    with pytest.raises(PrunekitError, match="also in another"):
        regime_doc.collect(tmp_path)


def test_run_accuracy_resumes_and_prunes_each_configuration_once(tmp_path, monkeypatch):
    import importlib

    from prunekit.experiments import accuracy
    perplexity = importlib.import_module("prunekit.evaluation.perplexity")
    calls = []

    def fake_zero_shot(rt, tasks, limit=None, batch_size=1, per_example=False):
        calls.append(float(sum(p.detach().abs().sum() for p in rt.model.parameters())))
        return {**{t: {"acc": 0.5, "n": 2, "per_example_acc": [1.0, 0.0]} for t in tasks}, "mean_acc": 0.5}

    monkeypatch.setattr(perplexity, "zero_shot", fake_zero_shot)
    out = tmp_path / "acc.jsonl"
    kw = dict(seeds=[0, 1], limit=2, configs=["owl", "mrp"], calib_samples=2, calib_seqlen=32, log=lambda m: None)
    recs = accuracy.run_accuracy("tiny-llama", 0.6, out, **kw)
    assert len(recs) == 5 and len(calls) == 5  # 2 seeds x 2 configurations + dense
    dense = calls[-1]
    assert all(c < dense for c in calls[:-1])  # pruned runs see pruned weights, the dense run dense ones
    again = accuracy.run_accuracy("tiny-llama", 0.6, out, **kw)
    assert len(again) == 5 and len(calls) == 5
    assert len(out.read_text().splitlines()) == 5
