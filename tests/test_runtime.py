"""The runtime is the only holder of engine state: nothing is hung on the transformers model, no
prunekit module keeps a reference to a loaded model, two runtimes never share state, and a weight
snapshot sees exactly the writes made through its own runtime."""
from __future__ import annotations

import sys

import pytest
import torch
from conftest import tiny_calib, tiny_model

from prunekit.core.runtime import Runtime
from prunekit.core.snapshot import weight_snapshot
from prunekit.errors import PrunekitError
from prunekit.solvers.prune import prune_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _refers_to(obj, target, depth: int = 2) -> bool:
    if obj is target:
        return True
    if depth and isinstance(obj, (list, tuple, set)):
        return any(_refers_to(o, target, depth - 1) for o in obj)
    if depth and isinstance(obj, dict):
        return any(_refers_to(o, target, depth - 1) for o in obj.values())
    return False


@pytest.mark.parametrize("mode", ["none", "cpu", "disk"])
def test_no_state_on_the_model_or_in_modules(mode, tmp_path):
    model = tiny_model("opt")
    before = set(vars(model))
    rt = Runtime.of(model)
    rt.offload(mode)
    with weight_snapshot(rt):
        prune_model(rt, tiny_calib(4, 16).input_ids, 0.5, "wanda", batch_size=2, progress=False)
    assert set(vars(model)) == before  # no attribute added to the transformers model
    assert not [k for k in vars(model) if "prunekit" in k]
    for name, mod in list(sys.modules.items()):
        if name.startswith("prunekit"):
            held = [k for k, v in vars(mod).items() if _refers_to(v, model) or _refers_to(v, rt)]
            assert not held, f"{name} keeps {held}"
    rt.close()


def test_runtimes_do_not_share_state():
    model = tiny_model("llama")
    a, b = Runtime.of(model), Runtime.of(model)
    assert Runtime.of(a) is a and a is not b
    with weight_snapshot(a) as snap:
        with a.onload(1, write=True):
            pass
        assert a.modified == {1} and b.modified == set() and b.snapshots == [] and snap.modified == [1]
    assert a.modified == set() and a.snapshots == []


def test_snapshot_needs_the_runtime_and_restores_what_went_through_it():
    model = tiny_model("llama")
    with pytest.raises(PrunekitError, match="Runtime"):
        weight_snapshot(model)
    rt = Runtime.of(model)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    with weight_snapshot(rt) as snap:
        prune_model(rt, tiny_calib(4, 16).input_ids, 0.5, "sparsegpt", batch_size=2, progress=False)
        assert snap.modified == [0, 1, 2, 3] and rt.modified == {0, 1, 2, 3}
    assert rt.modified == set() and rt.snapshots == []
    assert all(torch.equal(v, dense[k]) for k, v in model.state_dict().items())


def test_of_rejects_what_is_not_a_model():
    with pytest.raises(PrunekitError, match="Runtime or a transformers model"):
        Runtime.of("smollm2-135m")
