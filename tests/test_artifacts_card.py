"""The model card's "Reproduce" command, pasted into a shell, reproduces the run's record; the card
carries the base model's licence."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_data

ROOT = Path(__file__).resolve().parents[1]


def test_card_command_is_shell_quoted_and_license_set():
    from prunekit.reporting.artifacts import model_card
    argv = ["prunekit", "prune", "--model", "tiny-llama", "--eval", "", "--save-model", "my model", "--out", "a'b.json"]
    rec = {"model": "gemma3-270m", "metric": "wanda", "allocation": "owl", "global_sparsity": 0.5,
           "target_sparsity": 0.5, "layer_sparsity": [0.5], "provenance": {"argv": argv}}
    card = model_card(rec)
    cmd = re.search(r"## Reproduce\n\n```bash\n(.*)\n```", card).group(1)
    assert shlex.split(cmd) == argv  # what a POSIX shell hands the program
    front = card.split("---\n")[1]
    assert "license: gemma" in front.splitlines()
    rec["model"] = "some/hub-model"
    assert "license: other" in model_card(rec).split("---\n")[1].splitlines()


@pytest.mark.slow  # tiny-llama borrows SmolLM2's tokenizer from the real model cache; ~20 s
@needs_data
def test_pasted_command_reproduces_the_record(tmp_path):
    """Run once (an empty ``--eval ''`` and a path with a space), then paste the card's command into
    bash in another directory: the second record equals the first (timings and dates aside)."""
    shell_env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    prefix = f'prunekit() {{ "{sys.executable}" -m prunekit.cli "$@"; }}\n'  # this checkout's CLI as `prunekit`
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    cmd = ("prunekit prune --model tiny-llama --metric wanda --sparsity 0.5 --calib-samples 2 --calib-seqlen 32 "
           "--eval '' --quiet --threads 1 --save-model 'pruned model' --out run.json")
    subprocess.run(["bash", "-c", prefix + cmd], cwd=first, env=shell_env, check=True, timeout=300)
    card = (first / "pruned model" / "README.md").read_text()
    pasted = re.search(r"## Reproduce\n\n```bash\n(.*)\n```", card).group(1)
    r = subprocess.run(["bash", "-c", prefix + pasted], cwd=second, env=shell_env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = (json.loads((d / "run.json").read_text()) for d in (first, second))
    for rec in (a, b):
        rec.pop("timings_s", None)
        for k in ("created", "models", "host"):
            rec["provenance"].pop(k, None)
    assert a == b
    assert a["provenance"]["argv"][a["provenance"]["argv"].index("--eval") + 1] == ""
