"""Sentences generated from the numbers: what they say about each method follows from its ratio to
dense (computed here independently), so notebook text cannot contradict its table."""
from __future__ import annotations

import re

import numpy as np
import pytest

from prunekit.reporting.sentences import versus_dense


@pytest.mark.parametrize("seed", range(5))
def test_versus_dense_matches_the_numbers(seed):
    rng = np.random.default_rng(seed)
    dense = float(rng.uniform(10, 40))
    ppl = {m: dense * float(rng.choice([rng.uniform(1.0, 1.2), rng.uniform(1.3, 1.9), rng.uniform(3, 50)]))
           for m in ("magnitude", "wanda", "sparsegpt")}
    s = versus_dense(ppl, dense, 0.5)
    assert s.startswith("At 50% sparsity") and s.count(".") >= 1
    order = [m for m in sorted(ppl, key=ppl.get)]
    assert [m for m in re.findall(r"(magnitude|wanda|sparsegpt)", s)] == order  # best first
    for m, p in ppl.items():
        ratio = p / dense
        words = "close to dense" if ratio <= 1.25 else "moderately above dense" if ratio <= 2 else "far above dense"
        assert re.search(rf"{m}( is)? {words} \({p:.2f}, {ratio:.2f}×", s), (m, ratio, s)


def test_the_case_of_the_report():
    # SparseGPT at 96 against a dense 28 is not "close to dense"
    s = versus_dense({"sparsegpt": 96.0, "wanda": 40.0}, 28.0, 0.5)
    assert "sparsegpt far above dense" in s and "close to dense" not in s


def test_bad_dense_is_an_error():
    with pytest.raises(ValueError):
        versus_dense({"wanda": 3.0}, 0.0)
