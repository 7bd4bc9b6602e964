"""Stock lm-eval, documented: `prunekit tasks --write DIR` renders the offline twins and prints the
`lm_eval` command; the stock CLI runs it on a saved model and agrees with prunekit's in-memory
zero-shot evaluation of the same model (both are stock lm-eval; only the document loader differs
from the hub task)."""
from __future__ import annotations

import glob
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from prunekit.core.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow,  # tiny-llama borrows SmolLM2's tokenizer from the real model cache
              pytest.mark.skipif(not os.environ.get("PRUNEKIT_DATA_DIR"), reason="PRUNEKIT_DATA_DIR not set")]


def test_tasks_lists_twins(capsys):
    from prunekit.cli import main
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "prunekit_boolq" in out and "prunekit_arc_easy" in out


def test_unknown_task_is_one_line_error(capsys, tmp_path):
    from prunekit.cli import main
    assert main(["tasks", "--write", str(tmp_path / "t"), "--tasks", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown task 'nope'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "t").exists()


def test_stock_lm_eval_cli_runs_a_twin_on_a_saved_model(tmp_path, capsys):
    import torch
    from prunekit.cli import main
    from prunekit.core.loading import load_model
    from prunekit.core.saving import save_model
    from prunekit.evaluation.zeroshot import zero_shot
    torch.set_num_threads(1)
    rt = load_model("tiny-llama")
    model, tok = rt.model, rt.tokenizer
    save_model(Runtime.of(model, tok), tmp_path / "model")
    assert main(["tasks", "--write", str(tmp_path / "tasks"), "--tasks", "arc_easy",
                 "--model", str(tmp_path / "model")]) == 0
    printed = capsys.readouterr().out
    cmd = shlex.split(next(ln for ln in printed.splitlines() if ln.strip().startswith("lm_eval ")))
    assert (tmp_path / "tasks" / "prunekit_arc_easy.yaml").is_file()
    limit = 6
    exe = Path(sys.executable).with_name("lm_eval")
    argv = ([str(exe)] if exe.exists() else [sys.executable, "-m", "lm_eval"]) + cmd[1:] + [
        "--limit", str(limit), "--output_path", str(tmp_path / "out"), "--seed", "0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    (res_file,) = glob.glob(str(tmp_path / "out" / "**" / "results_*.json"), recursive=True)
    cli = json.loads(Path(res_file).read_text())
    acc_cli = cli["results"]["prunekit_arc_easy"]["acc,none"]
    assert cli["n-samples"]["prunekit_arc_easy"]["effective"] == limit
    # the same model and documents through prunekit's in-memory path (stock HFLM + simple_evaluate)
    ours = zero_shot(Runtime.of(model, tok), ["arc_easy"], limit=limit)
    assert acc_cli == pytest.approx(ours["arc_easy"]["acc"], abs=1e-12)
    assert cli["results"]["prunekit_arc_easy"]["acc_norm,none"] == pytest.approx(ours["arc_easy"]["acc_norm"], abs=1e-12)
