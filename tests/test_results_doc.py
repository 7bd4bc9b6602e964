"""docs/results.md sections regenerated from a notebook's results JSON (reporting/results_doc.py)."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd


def _runs(rng):
    rows = []
    for model in ("m-a", "m-b"):
        for seed in (0, 1, 2):
            base = rng.normal(4.0, 0.3, 4)
            for alloc, shift in (("uniform", 0.0), ("owl", -0.05)):
                nll = base + shift + rng.normal(0, 0.01, 4)
                rows.append({"model": model, "seed": seed, "allocation": alloc, "method": alloc, "metric": "wanda",
                             "sparsity": 0.7, "nll_wikitext2": list(nll),
                             "ppl_wikitext2": math.exp(nll.mean()), "seconds": 10.0})
    return pd.DataFrame(rows)


def _document(runs):
    from prunekit.experiments import comparison
    from prunekit.reporting.results import results_document
    repro = comparison.reproduction_table(runs, n_boot=200)
    cfg = {"grid": "g.yaml", "seeds": [0, 1, 2], "calib_samples": 8, "calib_seqlen": 256,
           "eval_datasets": ["wikitext2"], "eval_windows": 4, "eval_seqlen": 1024,
           "groups": [{"sparsity": 0.7, "metric": "wanda", "allocations": ["uniform", "owl"]}],
           "method_options": {}}
    data = {"summary": ["x"], "profile": "cpu", "models": ["m-a", "m-b"], "settings": cfg,
            "dense": {"m-a": {"wikitext2": 20.0}, "m-b": {"wikitext2": 30.0}}, "seconds": {"m-a": 60.0},
            "runs": runs.to_dict(orient="records"), "reproduction": repro.to_dict(orient="records"),
            "matrix": comparison.reproduction_matrix(repro).to_dict(orient="records")}
    return json.loads(json.dumps(results_document("50_comparison", data, profile="cpu"), default=str)), repro


def test_section_carries_the_matrix_and_independently_computed_means(tmp_path):
    from prunekit.reporting.results_doc import update
    runs = _runs(np.random.default_rng(0))
    res, repro = _document(runs)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(res))
    doc = tmp_path / "results.md"
    doc.write_text("# head\nhand text\n<!-- BEGIN 50_comparison -->\nold\n<!-- END 50_comparison -->\ntail\n")
    update(doc, path)
    text = doc.read_text()
    assert text.startswith("# head\nhand text\n") and text.endswith("<!-- END 50_comparison -->\ntail\n")
    assert "old" not in text
    # the OWL claim's interval, one cell per model, from the table the notebook saved
    for model in ("m-a", "m-b"):
        r = repro[(repro.model == model) & repro.claim.str.startswith("OWL + Wanda")].iloc[0]
        assert f"{r['measured_change_%']:+.1f} % [{r['ci_low_%']:+.1f}, {r['ci_high_%']:+.1f}]" in text
        # mean ± std over seeds recomputed here from the per-window NLLs
        sel = runs[(runs.model == model) & (runs.allocation == "owl")]
        ppl = [math.exp(np.mean(v)) for v in sel.nll_wikitext2]
        assert f"{np.mean(ppl):.1f} ± {np.std(ppl, ddof=1):.1f}" in text
    assert "m-a: dense perplexity wikitext2 20.00" in text


def test_missing_markers_or_unknown_results_are_one_line_errors(tmp_path, capsys):
    from prunekit.reporting.results_doc import main
    res, _ = _document(_runs(np.random.default_rng(1)))
    good = tmp_path / "r.json"
    good.write_text(json.dumps(res))
    other = tmp_path / "o.json"
    other.write_text(json.dumps({**res, "name": "30_svnup"}))
    doc = tmp_path / "d.md"
    doc.write_text("no markers\n")
    for args, needle in (([str(good), "--doc", str(doc)], "needs exactly one"),
                         ([str(other), "--doc", str(doc)], "no docs generator for '30_svnup'"),
                         ([str(tmp_path / "nope.json"), "--doc", str(doc)], "cannot read results")):
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert doc.read_text() == "no markers\n"

