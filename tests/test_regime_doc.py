"""docs/results.md sections against the kept results JSON they are generated from, and the regime
section's numbers against the raw study files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from prunekit.reporting import regime_doc
from prunekit.reporting.results import results_document
from prunekit.reporting.results_doc import GENERATORS

ROOT = Path(__file__).resolve().parents[1]
KEPT = {"50_comparison": ROOT / "docs/data/comparison/50_comparison-cpu.json",
        "regime": ROOT / "docs/data/regime/regime.json"}


def _section(name: str) -> str:
    text = (ROOT / "docs/results.md").read_text()
    begin, end = f"<!-- BEGIN {name} -->\n", f"<!-- END {name} -->"
    assert text.count(begin) == 1 and text.count(end) == 1
    return text.split(begin)[1].split(end)[0]


@pytest.mark.parametrize("name", sorted(KEPT))
def test_docs_sections_are_the_generated_text_of_the_kept_json(name):
    if not KEPT[name].is_file():
        pytest.skip(f"{KEPT[name]} not kept")
    res = json.loads(KEPT[name].read_text())
    assert res["name"] == name
    assert _section(name) == GENERATORS[name](res)


def _study(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    curve = [{"sparsity": s, "ratio": float(np.exp(9 * (s - 0.4))), "nll": 1.0, "seconds": 2.0}
             for s in (0.5, 0.6, 0.7, 0.75, 0.65, 0.63, 0.64)]
    entry = {"settings": {"model": "m", "metric": "wanda", "dtype": "torch.bfloat16"}, "s_star": 0.635,
             "lo": 0.63, "hi": 0.64, "target": 15.1, "curve": sorted(curve, key=lambda p: p["sparsity"])}
    (tmp_path / "sstar.json").write_text(json.dumps({"entries": {"m|wanda|seed0|default": entry}}))
    rows = [{"model": "m", "seed": s, "metric": "sparsegpt", "sparsity": 0.7, "config": c,
             "heldout_nll": float(rng.normal(6, 1)), "planned_sparsity": [0.7] * 3}
            for s in range(3) for c in ("uniform", "mrp[score=solver]", "mrp[score=wanda]")]
    (tmp_path / "mrp_score.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    v0, v1 = rng.normal(size=10).tolist(), rng.normal(size=10).tolist()
    draws = {"m|s0.7|2x2048|w3,absent": {"draws": [{"values": v0, "evaluations": 40, "seconds": 5.0},
                                                   {"values": v1, "evaluations": 40, "seconds": 6.0}],
                                         "settings": {"estimator": "sliding_window w=3 background=absent"},
                                         "spearman": [[1.0, 0.5], [0.5, 1.0]]}}
    (tmp_path / "svnup_draws.json").write_text(json.dumps({"entries": draws}))
    run = lambda ppl, vals, ev, opts: {"ppl": ppl, "values": vals, "evaluations": ev, "seconds": 3.0, "options": opts}
    quality = {"m|s0.7|seed1|c4 8x256|monte_carlo40,12345": {
        "default": run(412.5, v0, 40, {}),
        "reference": run(401.25, v1, 300, {"estimator": "monte_carlo", "n_permutations": 40, "seed": 12345}),
        "summary": {"quality": 9.9}},  # a stale summary: the section recomputes from the two runs
        "m|s0.7|seed2|c4 8x256|monte_carlo40,12345": {"default": run(1.0, v0, 40, {})}}  # reference not run yet
    (tmp_path / "svnup_quality.json").write_text(json.dumps({"entries": quality}))
    return tmp_path, v0, v1


def test_regime_section_numbers_come_from_the_study_files(tmp_path):
    folder, v0, v1 = _study(tmp_path)
    res = results_document("regime", regime_doc.collect(folder), profile="cpu", summary="")
    text = GENERATORS["regime"](res)
    row = next(ln for ln in text.splitlines() if ln.startswith("| m ") and "wanda" in ln and "bfloat16" in ln)
    cells = [c.strip() for c in row.strip("|").split("|")]
    ratio70 = float(np.exp(9 * 0.3))
    assert cells[3] == "0" and cells[5:8] == ["0.635", "[0.63, 0.64]", f"{ratio70:.2f}"]
    rows = [json.loads(x) for x in (tmp_path / "mrp_score.jsonl").read_text().splitlines()]
    nll = {(r["seed"], r["config"]): r["heldout_nll"] for r in rows}
    d = np.mean([nll[(s, "mrp[score=wanda]")] - nll[(s, "mrp[score=solver]")] for s in range(3)])
    assert f"{d:+.3f} (" in text and ("Wanda's score |" if d < 0 else "solver's score |") in text
    from scipy import stats
    sv = next(ln for ln in text.splitlines() if "2 × 2048 tokens" in ln)
    rho = stats.spearmanr(v0, v1).statistic  # from the stored values, not the stored matrix
    assert sv.strip("|").split("|")[-1].strip().startswith(f"{rho:.3f} [") and "| 5 / 6 " in sv
    q = [ln for ln in text.splitlines() if "Monte-Carlo, 40 permutations" in ln]
    assert len(q) == 1, "a seed without its reference run has no row"
    cells = [c.strip() for c in q[0].strip("|").split("|")]
    assert cells[2] == "1" and cells[5:8] == ["412.50", "401.25", f"{412.5 / 401.25:.3f}"]
    assert cells[8].startswith(f"{rho:.3f} [") and cells[9] == "40 / 300"


def test_claims_tables_pair_each_regime_and_show_the_seed0_profiles():
    rng = np.random.default_rng(1)
    runs = []
    for s in (0.7, 0.66):
        for a in ("uniform", "owl"):
            for sd in range(3):
                nll = rng.normal(5 + s, 0.05, 4)
                runs.append({"model": "m", "seed": sd, "allocation": a, "metric": "wanda", "sparsity": s,
                             "ppl_wikitext2": float(np.exp(nll.mean())), "nll_wikitext2": nll.tolist(),
                             "planned": rng.uniform(0.5, 0.9, 6).round(4).tolist(), "source": "x"})
    mat, summ, prof = regime_doc.claims_tables({"sstar": {"m": {"wanda": 0.66}}, "runs": runs})
    assert {"m @ 70 %", "m @ s*"} <= set(mat.columns)
    owl = [r for r in runs if r["allocation"] == "owl" and r["seed"] == 0]
    for r in owl:
        row = prof[(prof["sparsity"] == f"{r['sparsity']:.3f}") & (prof["allocation"] == "owl")].iloc[0]
        assert row["per block"] == " ".join(f"{x:.2f}" for x in r["planned"])
    for s in (0.7, 0.66):
        ppl = [r["ppl_wikitext2"] for r in runs if r["allocation"] == "uniform" and r["sparsity"] == s]
        cell = summ[(summ["sparsity"] == f"{s:.3f}") & (summ["allocation"] == "uniform")]["wikitext2"].iloc[0]
        assert cell == f"{np.mean(ppl):.1f} ± {np.std(ppl, ddof=1):.1f}"


def test_a_70_percent_run_the_study_repeated_replaces_the_kept_one(tmp_path, monkeypatch):
    import pandas as pd

    from prunekit.experiments import sweep
    base = {"model": "m", "metric": "sparsegpt", "sparsity": 0.7, "ppl_wikitext2": 1.0, "nll_wikitext2": [0.0],
            "planned": [0.7], "seconds": 1.0, "cpu_seconds": 1.0}
    kept = [{**base, "seed": s, "allocation": a, "ppl_wikitext2": 100.0 + s} for s in (0, 1) for a in ("mrp", "owl")]
    (tmp_path / "kept.json").write_text(json.dumps({"provenance": {"git": {"commit": "abc"}},
                                                    "data": {"runs": kept}}))
    study = [{**base, "seed": 0, "allocation": "mrp", "ppl_wikitext2": 7.0, "status": "ok"}]
    monkeypatch.setattr(sweep, "read_results", lambda path: study)
    monkeypatch.setattr(sweep, "frame", lambda recs: pd.DataFrame(recs))
    runs = regime_doc.claims_runs(tmp_path / "study.jsonl", {}, kept_70=tmp_path / "kept.json")["runs"]
    got = {(r["seed"], r["allocation"]): (r["ppl_wikitext2"], r["source"]) for r in runs}
    assert len(runs) == 4
    assert got[0, "mrp"] == (7.0, "s* study")
    assert got[1, "mrp"] == (101.0, "kept 70 % render (abc)")
    assert got[0, "owl"][0] == 100.0


def test_curves_are_one_table_per_model_and_solver_with_a_column_per_dtype_and_seed():
    rng = np.random.default_rng(2)
    entries = {}
    for model, metric, dtype, seed in [("m", "wanda", "float32", 1), ("m", "wanda", "bfloat16", 0),
                                       ("m", "sparsegpt", "bfloat16", 2), ("a", "wanda", "bfloat16", 0)]:
        pts = sorted(rng.choice([0.5, 0.6, 0.65, 0.7], size=3, replace=False))
        entries[f"{model}|{metric}|seed{seed}|{dtype}"] = {
            "settings": {"model": model, "metric": metric, "dtype": f"torch.{dtype}", "seed": seed},
            "s_star": 0.6, "lo": 0.6, "hi": 0.61, "target": 15.1,
            "curve": [{"sparsity": float(s), "ratio": float(rng.uniform(1, 30)), "seconds": 1.0} for s in pts]}
    tables = regime_doc.curve_tables(entries)
    assert list(tables) == ["a wanda", "m sparsegpt", "m wanda"]
    assert list(tables["m wanda"].columns) == ["sparsity", "bfloat16 seed 0", "float32 seed 1"]
    for e in entries.values():
        st = e["settings"]
        t = tables[f"{st['model']} {st['metric']}"].set_index("sparsity")
        col = f"{st['dtype'][6:]} seed {st['seed']}"
        for p in e["curve"]:
            assert t.loc[round(p["sparsity"], 4), col] == f"{p['ratio']:.2f}"
        assert (t[col] != "").sum() == len(e["curve"])
    rows = regime_doc.sstar_rows(entries)
    assert list(zip(rows["model"], rows["solver"], rows["seed"])) == [
        ("a", "wanda", 0), ("m", "sparsegpt", 2), ("m", "wanda", 0), ("m", "wanda", 1)]


def _claim_runs(rng, seeds, scale=None):
    """uniform and OWL with Wanda at 70 % and at s* = 0.66: per-window NLLs around 5 + s, OWL lower."""
    runs = []
    for s in (0.7, 0.66):
        for a in ("uniform", "owl"):
            for sd in seeds:
                nll = rng.normal(5 + s - (0.3 if a == "owl" else 0.0), 0.05, 4)
                runs.append({"model": "m", "seed": sd, "allocation": a, "metric": "wanda", "sparsity": s,
                             "ppl_wikitext2": float(np.exp(nll.mean())), "nll_wikitext2": nll.tolist(),
                             "planned": [s] * 3, "seconds": 1.0, "cpu_seconds": 1.0})
    return runs


def test_dtype_tables_pair_each_run_with_its_default_twin_on_the_same_seeds():
    runs = _claim_runs(np.random.default_rng(3), range(3))
    claims = {"sstar": {"m": {"wanda": 0.66}}, "runs": runs}
    # fp32 on seeds 0 and 1 only: at s* the very same numbers (an identity), at 70 % OWL made 40 % worse
    fp32 = [dict(r) for r in runs if r["seed"] < 2]
    for r in fp32:
        if r["sparsity"] == 0.7 and r["allocation"] == "owl":
            r["nll_wikitext2"] = (np.asarray(r["nll_wikitext2"]) + 0.6).tolist()
            r["ppl_wikitext2"] = float(np.exp(np.mean(r["nll_wikitext2"])))
    groups, verdicts = regime_doc.dtype_tables(claims, fp32)
    assert len(groups) == 4 and set(groups["seeds"]) == {2}
    for _, g in groups.iterrows():
        pick = lambda rs: [r["ppl_wikitext2"] for r in rs if r["allocation"] == g["allocation"]  # noqa: E731
                           and f"{r['sparsity']:.3f}" == g["sparsity"] and r["seed"] < 2]
        x, y = np.array(pick(runs)), np.array(pick(fp32))
        assert g["paired gap per seed"] == ", ".join(f"{100 * (a / b - 1):+.1f} %" for a, b in zip(x, y))
        assert g["move > seed spread"] == ("yes" if abs(x.mean() - y.mean()) > np.std(x, ddof=1) else "no")
    assert set(verdicts["seeds"]) == {2}  # the paired seeds the verdicts read (seed 2 has no fp32 twin)
    at_s = verdicts[verdicts["model"] == "m @ s*"]
    assert len(at_s) and (at_s["default"] == at_s["fp32"]).all() and (at_s["verdict changes"] == "no").all()
    owl70 = verdicts[(verdicts["model"] == "m @ 70 %") & verdicts["claim"].str.contains("OWL", case=False)]
    assert len(owl70) and owl70["default"].iloc[0].endswith("reproduced")
    assert owl70["fp32"].iloc[0].endswith("contradicted") and owl70["verdict changes"].iloc[0] == "yes"
    # runs that state their precision are labelled by it ('default' would be ambiguous once the default moved)
    named = {**claims, "runs": [{**r, "dtype": "bf16"} for r in runs]}
    g2, v2 = regime_doc.dtype_tables(named, fp32)
    assert "bf16" in g2.columns and "default" not in g2.columns and (g2["bf16"] == groups["default"]).all()
    assert (v2["bf16"] == verdicts["default"]).all()
    mixed = {**claims, "runs": [{**r, "dtype": "bf16" if r["seed"] else None} for r in runs]}
    assert "default" in regime_doc.dtype_tables(mixed, fp32)[0].columns


def test_dtype_runs_refuse_another_dtype_and_a_run_twice(tmp_path, monkeypatch):
    import pandas as pd

    from prunekit.errors import PrunekitError
    from prunekit.experiments import sweep
    row = {"model": "m", "seed": 0, "allocation": "owl", "metric": "wanda", "sparsity": 0.7, "status": "ok",
           "ppl_wikitext2": 1.0, "nll_wikitext2": [0.0], "planned": [0.7], "dtype": "fp32"}
    files = {"a": [row], "b": [row], "c": [{**row, "dtype": "bf16"}]}
    monkeypatch.setattr(sweep, "read_results", lambda path: files[Path(path).name])
    # like the real frame, rows without the record's dtype: it must be read from the record
    monkeypatch.setattr(sweep, "frame", lambda recs: pd.DataFrame(recs).drop(columns="dtype"))
    assert len(regime_doc.dtype_runs([tmp_path / "a"], "fp32")) == 1
    with pytest.raises(PrunekitError, match="also in another fp32 file"):
        regime_doc.dtype_runs([tmp_path / "a", tmp_path / "b"], "fp32")
    with pytest.raises(PrunekitError, match="has dtype bf16, not fp32"):
        regime_doc.dtype_runs([tmp_path / "c"], "fp32")
