"""Absorption with its default held-out γ selection (``gamma=None``) under disk offload: it completes
(it used to crash with "Cannot copy out of meta tensor"), gives the same plan as in memory, and
leaves the model exactly dense (every block tensor equal to a copy taken before), with no snapshot
left watching and no block marked modified."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import FAMILIES, hf_byte_tokenizer, tiny_calib, tiny_model

from prunekit.allocation import allocate
from prunekit.core.runtime import Runtime
from prunekit.scoring.statistics import Statistics

pytestmark = pytest.mark.usefixtures("one_thread")
needs_data = pytest.mark.skipif(not os.environ.get("PRUNEKIT_DATA_DIR"), reason="PRUNEKIT_DATA_DIR not set")


def block_state(rt) -> dict:
    """Copies of every tensor of every decoder block (onloaded) and of the rest of the model."""
    out = {k: v.detach().clone() for k, v in rt.model.state_dict().items() if v.device.type != "meta"}
    for i in range(rt.layout.num_blocks):
        with rt.onload(i):
            out.update({f"block{i}.{k}": v.detach().clone() for k, v in rt.layout.blocks[i].state_dict().items()})
    return out


def run(kind: str, mode: str, source: str):
    tok = hf_byte_tokenizer() if source == "c4" else None
    rt = Runtime.of(tiny_model(kind, vocab=len(tok) if tok is not None else 256), tok)
    rt.offload(mode)
    if source == "c4":  # the real default path: held-out windows drawn from the calibration dataset
        from prunekit.core.data import calibration_data
        calib, opts = calibration_data("c4", tok, 4, 24, seed=0), {}
    else:               # synthetic tokens have no dataset to draw from: pass the held-out windows
        calib, opts = tiny_calib(4, 24, seed=0), {"heldout": tiny_calib(2, 24, seed=1).input_ids}
    before = block_state(rt)
    stats = Statistics(rt, calib, cache=False, progress=False, batch_size=2)
    plan = allocate("absorption", stats, 0.5, base="owl", **opts)
    after = block_state(rt)
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(after[k], before[k])]
    assert not changed, f"{mode}: absorption left modified weights {changed[:4]}"
    assert rt.snapshots == [] and rt.modified == set(), mode
    nll = plan.extras["gamma_nll"]
    assert plan.options.get("gamma_selected") and len(nll) == 4
    assert len(set(nll.values())) > 1  # the held-out runs really pruned the model (differently per γ)
    return plan


def check_same_plan(kind: str, source: str) -> None:
    plans = {mode: run(kind, mode, source) for mode in ("none", "disk")}
    a, b = plans["none"], plans["disk"]
    assert a.options["gamma"] == b.options["gamma"]
    assert a.extras["gamma_nll"] == b.extras["gamma_nll"]
    np.testing.assert_array_equal(np.asarray(b.extras["absorption_r"]), np.asarray(a.extras["absorption_r"]))
    np.testing.assert_array_equal(b.values, a.values)


@pytest.mark.parametrize("kind", FAMILIES)
def test_absorption_gamma_selection_under_disk_offload(kind):
    check_same_plan(kind, "synthetic")


@needs_data
def test_absorption_default_call_under_disk_offload_with_dataset_heldout():
    """Exactly ``allocate("absorption", Statistics(rt_disk, calib), 0.5, base="owl")``: the held-out
    windows come from the calibration dataset (c4), as on the CLI."""
    check_same_plan("llama", "c4")
