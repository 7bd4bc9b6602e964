"""CLI bad input: one-line error, exit code 2, no output file — all before any model is loaded."""
from __future__ import annotations

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


def test_method_flags_are_generated(capsys):
    from prunekit.cli.parser import build_parser
    ap, table = build_parser()
    for flag in ("--owl-m", "--owl-lambda", "--alpha-epsilon", "--atp-beta"):
        assert flag in table
    args = ap.parse_args(["prune", "--sparsity", "0.7", "--allocation", "owl", "--owl-lambda", "0.1"])
    from prunekit.cli.parser import collect_options as _collect_options
    assert _collect_options(args, "owl", table) == {"owl": {"lam": 0.1}}


def test_methods_lists_registry(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("uniform", "owl", "alphapruning", "atp"):
        assert name in out


def test_version_and_help_do_not_load_torch():
    """--version and the top-level --help answer without importing torch (they took 3-5 s when the
    package imported it first); the subprocess starts from a clean interpreter."""
    import subprocess
    import sys
    code = ("import sys\nfrom prunekit.cli import main\n"
            "for argv in (['--version'], ['--help'], ['sweep', '--help']):\n"
            "    assert main(argv) == 0\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "prunekit 0.1.0" in r.stdout and "{prune,eval,methods,tasks,demo,sweep}" in r.stdout


def test_prune_help_opens_with_examples_and_describes_every_method_flag(capsys):
    from prunekit.allocation import specs
    from prunekit.cli.parser import build_parser
    ap, table = build_parser()
    with pytest.raises(SystemExit):
        ap.parse_args(["prune", "--help"])
    out = capsys.readouterr().out
    head = out[:out.index("options:")]
    assert head.count("\n  prunekit prune ") == 3  # three example commands before any option
    assert {name for name, _ in table.values()} == {n for n, s in specs().items() if s.options}
    for flag, (method, opt) in table.items():
        assert opt.doc, f"{flag}: {method}'s docstring has no line for option '{opt.name}'"
        assert opt.doc.split("…")[0][:30] in " ".join(out.split()), flag
