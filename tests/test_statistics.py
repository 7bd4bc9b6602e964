"""Statistics and its cache (prunekit/scoring/statistics.py): a sweep reuses dense statistics (zero dense passes on a warm cache); a
corrupt, truncated or misplaced entry is detected and recomputed, never used."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import tiny_calib, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = ("uniform", "owl", "alphapruning", "atp")
SPARSITIES = (0.5, 0.6, 0.7)


def sweep(stats):
    from prunekit.allocation.registry import allocate
    return {(m, s): allocate(m, stats, s).per_block for m in METHODS for s in SPARSITIES}


def stats(cache, model, calib):
    from prunekit.scoring.statistics import Statistics
    return Statistics(model, calib, cache=cache, progress=False)


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.fixture
def setup(tmp_path):
    from prunekit.scoring.statistics import StatsCache
    return StatsCache(tmp_path / "stats"), tiny_model("llama"), tiny_calib()


def test_sweep_one_dense_pass_then_none(setup):
    cache, model, calib = setup
    s1 = stats(cache, model, calib)
    ref = sweep(s1)
    assert s1.dense_passes == 1  # 4 allocations × 3 sparsities share one pass
    s2 = stats(cache, model, calib)  # a new process would see only the disk cache
    assert_same(sweep(s2), ref)
    assert s2.dense_passes == 0


@pytest.mark.parametrize("damage", ["flip", "truncate", "swap"])
def test_damaged_entry_is_recomputed_not_used(setup, damage):
    cache, model, calib = setup
    ref = sweep(stats(cache, model, calib))
    files = sorted(cache.root.glob("*.safetensors"))
    assert len(files) >= 2  # Wanda norms (dense pass) and ESD alphas (weights only)
    for i, f in enumerate(files):
        raw = bytearray(f.read_bytes())
        if damage == "flip":  # one payload byte: the stored checksum no longer matches
            raw[-1] ^= 0xFF
            f.write_bytes(bytes(raw))
        elif damage == "truncate":
            f.write_bytes(bytes(raw[: len(raw) // 2]))
        elif damage == "swap":  # a valid file under another entry's name: its stored key differs
            shutil.copyfile(files[(i + 1) % len(files)], f.with_suffix(".swap"))
    if damage == "swap":
        for f in files:
            f.with_suffix(".swap").replace(f)
    s = stats(cache, model, calib)
    assert_same(sweep(s), ref)
    assert s.dense_passes == 1  # recomputed
    s_again = stats(cache, model, calib)
    assert_same(sweep(s_again), ref)
    assert s_again.dense_passes == 0  # and the rewritten entries are valid


def test_other_calibration_or_weights_do_not_hit_the_cache(setup):
    cache, model, calib = setup
    sweep(stats(cache, model, calib))
    other = stats(cache, model, tiny_calib(seed=1))
    sweep(other)
    assert other.dense_passes == 1
    model2 = tiny_model("llama", seed=1)  # different weights -> different fingerprint
    s2 = stats(cache, model2, calib)
    sweep(s2)
    assert s2.dense_passes == 1
