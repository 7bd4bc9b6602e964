"""Notebook parameters are used as given: a list passed by papermill (``-p`` passes its text, the
Python API a list) runs every value, not the quick profile's one-value cut."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_data

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("given, want", [
    ([0.5, 0.6], [0.5, 0.6]), ("[0.5, 0.6]", [0.5, 0.6]), ("[0.5,0.6]", [0.5, 0.6]), (0.55, [0.55]),
    ((0.4,), [0.4]),
])
def test_given_axis_is_used_as_given_in_every_profile(given, want):
    from prunekit.experiments.profiles import BASELINES, grid
    for prof in ("quick", "cpu", "paper"):
        g = grid(prof, BASELINES, sparsities=given, metrics=None)
        assert g["sparsities"] == want
        assert g["metrics"] == BASELINES[prof]["metrics"]  # an axis left None: the profile's default


def test_bad_axis_is_one_line_error():
    from prunekit.errors import PrunekitError
    from prunekit.experiments.profiles import BASELINES, grid
    for bad in ("[0.5", "[]"):
        with pytest.raises(PrunekitError, match="sparsities"):
            grid("quick", BASELINES, sparsities=bad, metrics=None)
    with pytest.raises(PrunekitError, match="no default"):
        grid("quick", None, sparsities=None)


@pytest.mark.slow  # tiny-llama borrows SmolLM2's tokenizer from the real model cache; ~40 s
@needs_data
def test_papermill_cli_list_parameter_runs_every_value(tmp_path):
    """The command of the report: ``papermill 10_baselines.ipynb o.ipynb -p sparsities "[0.5,0.6]"``
    (on tiny-llama, Wanda, uniform) prunes at both sparsities."""
    env_dir = tmp_path / "results"
    cmd = [sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "10_baselines.ipynb"), str(tmp_path / "o.ipynb"),
           "-p", "model", "tiny-llama", "-p", "sparsities", "[0.5,0.6]", "-y", "metrics: [wanda]\nallocations: [uniform]",
           "--cwd", str(tmp_path), "-k", "python3", "--no-progress-bar"]
    import os
    env = {**os.environ, "PRUNEKIT_REPORT_DIR": str(env_dir), "PRUNEKIT_THREADS": "1", "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((env_dir / "10_baselines.json").read_text())["data"]["rows"]
    assert sorted({row["sparsity"] for row in rows}) == [0.5, 0.6]
    assert {row["metric"] for row in rows} == {"wanda"}
