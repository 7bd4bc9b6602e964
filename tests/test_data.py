"""Texts and the calibration sampler (prunekit/core/data.py, docs/methods.md §0.1): one-line errors that
say where they looked, and the Wanda/SparseGPT sampling protocol."""
from __future__ import annotations

import json

import pytest


def test_missing_data_dir(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_DATA_DIR", str(tmp_path / "nowhere"))
    from prunekit.core.data import load_text
    from prunekit.errors import PrunekitError
    with pytest.raises(PrunekitError, match="does not exist"):
        load_text("wikitext2", "test")


def test_missing_dataset_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from prunekit.core.data import load_text
    from prunekit.errors import PrunekitError
    with pytest.raises(PrunekitError) as e:
        load_text("ptb", "test")
    assert str(tmp_path / "ptb" / "ptb.test.txt") in str(e.value) and "PRUNEKIT_DATA_DIR" in str(e.value)


def test_calibration_sampler_protocol(byte_tokenizer, tmp_path, monkeypatch):
    """Seeded, windows are exact substrings of documents longer than seqlen, exclude= is disjoint."""
    import random
    docs = [("doc%03d " % i) * (5 + 7 * (i % 9)) for i in range(50)]
    (tmp_path / "c4").mkdir()
    (tmp_path / "c4" / "c4-train.00000-of-01024.first1000.jsonl").write_text(
        "".join(json.dumps({"text": d}) + "\n" for d in docs))
    monkeypatch.setenv("PRUNEKIT_DATA_DIR", str(tmp_path))
    from prunekit.core.data import calibration_data
    a = calibration_data("c4", byte_tokenizer, 6, 40, seed=3)
    b = calibration_data("c4", byte_tokenizer, 6, 40, seed=3)
    assert (a.input_ids == b.input_ids).all() and a.picks == b.picks
    # independent re-implementation of the reference loop (python random, rejection on length)
    rng = random.Random(3)
    enc = [list(d.encode()) for d in docs]
    for k in range(6):
        while True:
            i = rng.randint(0, len(docs) - 1)
            if len(enc[i]) > 40:
                break
        start = rng.randint(0, len(enc[i]) - 40 - 1)
        assert a.picks[k] == (i, start)
        assert a.input_ids[k].tolist() == enc[i][start:start + 40]
    held = calibration_data("c4", byte_tokenizer, 6, 40, seed=3, exclude=a)
    assert not set(held.picks) & set(a.picks)
