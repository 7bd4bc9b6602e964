"""CLI bad input: one-line error, exit code 2, no output file — all before any model is loaded."""
from __future__ import annotations

import json

import pytest

from prunekit.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("argv, needle", [
    (["prune", "--sparsity", "1.0"], "argument --sparsity: must lie in [0.0, 1.0)"),
    (["prune", "--sparsity", "-0.1"], "argument --sparsity: must lie in [0.0, 1.0)"),
    (["prune", "--sparsity", "0.5", "--metric", "obs"], "argument --metric: invalid choice"),
    (["prune", "--nm", "4:4"], "0 < N < M"),
    (["prune", "--nm", "2-4"], "bad N:M"),
    (["prune", "--nm", "2:4", "--sparsity", "0.6"], "contradicts"),
    (["prune", "--sparsity", "0.5", "--model", "no-such-model"], "unknown model"),
    (["prune", "--sparsity", "0.5", "--allocation", "nope"], "argument --allocation: invalid choice"),
    (["prune", "--sparsity", "0.5", "--eval", "wikitext3"], "unknown --eval dataset"),
    (["prune", "--sparsity", "0.5", "--calib-dataset", "pile"], "argument --calib-dataset: invalid choice"),
    (["prune", "--sparsity", "0.5", "--owl-m", "3"], "belongs to allocation 'owl'"),
    (["eval", "--model", "/no/such/file.gguf"], "GGUF file not found"),
])
def test_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, argv, needle):
    out = tmp_path / "run.json"
    code, err = _run(capsys, *argv, "--out", str(out))
    assert code == 2
    assert needle in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_unwritable_out(capsys, tmp_path):
    code, err = _run(capsys, "prune", "--sparsity", "0.5", "--out", str(tmp_path / "missing" / "r.json"))
    assert code == 2 and "cannot write" in err


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


def test_method_flags_are_generated(capsys):
    from prunekit.cli import build_parser
    ap, table = build_parser()
    for flag in ("--owl-m", "--owl-lambda", "--alpha-epsilon", "--atp-beta"):
        assert flag in table
    args = ap.parse_args(["prune", "--sparsity", "0.7", "--allocation", "owl", "--owl-lambda", "0.1"])
    from prunekit.cli import _collect_options
    assert _collect_options(args, "owl", table) == {"owl": {"lam": 0.1}}


def test_methods_lists_registry(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("uniform", "owl", "alphapruning", "atp"):
        assert name in out


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
