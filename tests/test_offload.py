"""Issue 12: offload modes, memory policies and the weight snapshot change no number.

Every engine user (pruning, the SV-NUP game, the absorption probe, MRP's LPS) is run on tiny LLaMA,
Qwen2, Gemma3 and OPT models with the blocks resident, in CPU RAM, or written to disk and read back
per use, and with activations on the device or on CPU with boundaries checkpointed every 2 blocks;
the results must equal the plain in-memory run. ``load_model`` with offload none/cpu/disk gives
bit-identical Wanda / SparseGPT masks; a failure inside a snapshot leaves the model exactly dense.
"""
from __future__ import annotations


import numpy as np
import pytest
import torch
from conftest import block_weights, tiny_calib, tiny_model

from prunekit.core.runtime import Runtime
from prunekit.core.snapshot import weight_snapshot
from prunekit.errors import PrunekitError
from prunekit.solvers.prune import prune_model

pytestmark = pytest.mark.usefixtures("one_thread")

KINDS = ("llama", "qwen2", "gemma3", "opt")
# (offload mode, activation placement, checkpoint_every)
SETUPS = [("cpu", "cpu", 2), ("disk", "cpu", 2), ("disk", "device", 1), ("none", "cpu", 3)]


weights = block_weights


def state(model) -> dict:
    """Every block weight (onloaded) and every other tensor of the model."""
    sd = {k: v.detach().clone() for k, v in Runtime.of(model).model.state_dict().items() if v.device.type != "meta"}
    sd.update({f"block{i}.{n}": w for (i, n), w in weights(model).items()})
    return sd


def same(a: dict, b: dict) -> bool:
    """Equal on every tensor both hold (meta tensors of offloaded blocks are compared as 'blockI.name')."""
    keys = a.keys() & b.keys()
    assert {k for k in a if k.startswith("block")} <= keys
    return all(torch.equal(a[k], b[k]) for k in keys)


def variant(kind, mode, acts, k, layers=4):
    rt = Runtime.of(tiny_model(kind, layers=layers))
    rt.offload(mode)
    rt.set_memory_policy(acts, k)
    return rt


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("metric", ["wanda", "sparsegpt"])
def test_pruning_identical_under_every_offload_mode_and_policy(kind, metric):
    ids = tiny_calib(4, 24).input_ids
    ref = tiny_model(kind)
    prune_model(ref, ids, 0.5, metric, batch_size=2, progress=False)
    want = weights(ref)
    for mode, acts, k in SETUPS:
        m = variant(kind, mode, acts, k)
        assert m.memory_policy.activations == acts
        rep = prune_model(m, ids, 0.5, metric, batch_size=2, progress=False)
        got = weights(m)
        assert abs(rep["global_sparsity"] - 0.5) < 0.01
        for key in want:
            assert torch.equal(got[key], want[key]), (mode, acts, key)


@pytest.mark.parametrize("kind", KINDS)
def test_svnup_game_values_identical(kind):
    from prunekit.allocation.svnup.game import LayerGame
    calib, held = tiny_calib(4, 20, seed=0), tiny_calib(3, 16, seed=1)
    coalitions = (0, 5, 15, 6, 9)

    def values(m, store):
        with LayerGame(m, calib.input_ids, held.input_ids, 0.6, "wanda", batch_size=2, store=store,
                       progress=False) as g:
            return [g(c) for c in coalitions]

    ref = tiny_model(kind)
    dense = state(ref)
    want = values(ref, "weights")
    for k, v in state(ref).items():  # restored exactly
        assert torch.equal(v, dense[k]), k
    for mode, acts, k in SETUPS:
        m = variant(kind, mode, acts, k)
        got = values(m, "masks")
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"{mode}/{acts}")
        assert same(state(m), dense), mode


@pytest.mark.parametrize("kind", KINDS)
def test_absorption_probe_identical(kind):
    from prunekit.allocation.absorption.probe import Probe
    ids = tiny_calib(4, 16).input_ids

    def run(m):
        p = Probe(m, ids, batch_size=2, progress=False)
        t1 = p.noise(1, eta=0.05, draws=2, seed=3)
        t2 = p.pruned(2, 0.5, "sparsegpt")
        return np.concatenate([t1.drift, t1.ratio, t2.drift, t2.cos_state])

    ref = tiny_model(kind)
    want = run(ref)
    for mode, acts, k in SETUPS:
        m = variant(kind, mode, acts, k)
        before = state(m)
        np.testing.assert_allclose(run(m), want, rtol=1e-5, atol=1e-7, err_msg=f"{mode}/{acts}/{k}")
        assert same(state(m), before), mode


@pytest.mark.parametrize("kind", KINDS)
def test_mrp_layer_sensitivity_identical(kind):
    from prunekit.experiments.mrp_findings import layer_sensitivity
    calib = tiny_calib(4, 16)
    want = {mt: layer_sensitivity(tiny_model(kind), mt, (0.5, 0.8), calib=calib, progress=False).table.loss.to_numpy()
            for mt in ("wanda", "sparsegpt")}
    for mode, acts, k in SETUPS:
        for mt in ("wanda", "sparsegpt"):
            m = variant(kind, mode, acts, k)
            before = state(m)
            got = layer_sensitivity(m, mt, (0.5, 0.8), calib=calib, progress=False).table.loss.to_numpy()
            np.testing.assert_allclose(got, want[mt], rtol=1e-5, err_msg=f"{mode}/{acts}/{mt}")
            assert same(state(m), before), mode


@pytest.mark.parametrize("mode", ["none", "cpu", "disk"])
def test_exception_inside_snapshot_leaves_model_exactly_dense(mode, monkeypatch):
    import prunekit.solvers.prune as pr
    m = Runtime.of(tiny_model("llama"))
    m.offload(mode)
    dense = state(m)
    real = pr.prune_block

    def failing(i, *a, **kw):
        real(i, *a, **kw)  # blocks 0..2 really pruned, then a failure
        if i == 2:
            raise RuntimeError("boom")

    monkeypatch.setattr(pr, "prune_block", failing)
    with pytest.raises(RuntimeError, match="boom"):
        with weight_snapshot(m) as snap:
            prune_model(m, tiny_calib(4, 16).input_ids, 0.7, "sparsegpt", batch_size=2, progress=False)
    assert snap.modified == []
    assert same(state(m), dense)
    assert not m.snapshots  # the snapshot stopped watching


def test_snapshot_copies_lazily_and_restore_is_reusable():
    m = Runtime.of(tiny_model("llama"))
    dense = state(m)
    with weight_snapshot(m) as snap:
        assert snap.modified == []
        with snap.modify(1), torch.no_grad():
            for lin in m.layout.linears(1).values():
                lin.weight.mul_(0)
        assert snap.modified == [1]  # only the modified block was copied
        snap.restore()
        assert snap.modified == []
        assert same(state(m), dense)
        prune_model(m, tiny_calib(4, 16).input_ids, 0.5, "wanda", batch_size=2, progress=False)
        assert snap.modified == [0, 1, 2, 3]
    assert same(state(m), dense)


def test_statistics_refuse_scores_from_a_pruned_model():
    from prunekit.scoring.statistics import Statistics
    m = Runtime.of(tiny_model("llama"))
    calib = tiny_calib(4, 16)
    st = Statistics(m, calib, cache=False, progress=False)
    dense = st.scores(0, "wanda")
    with weight_snapshot(m):
        prune_model(m, calib.input_ids, 0.5, "magnitude", progress=False)
        with pytest.raises(PrunekitError, match="pruned"):
            st.scores(1, "wanda")
    again = st.scores(0, "wanda")  # dense again: allowed, same numbers
    assert all(torch.equal(again[n], dense[n]) for n in dense)
    # a writer that bypasses the snapshot is caught by the weight samples too
    with torch.no_grad():
        m.layout.linears(2)["mlp.up_proj"].weight.mul_(0)
    with pytest.raises(PrunekitError, match="block 2"):
        st.scores(2, "magnitude")


def test_session_without_snapshot_and_with_offload(tmp_path):
    from prunekit.experiments.session import Session
    m = Runtime.of(tiny_model("llama"))
    m.offload("disk")
    calib = tiny_calib(4, 16)
    ref = tiny_model("llama")
    prune_model(ref, calib.input_ids, 0.5, "wanda", batch_size=2, progress=False)
    s = Session.__new__(Session)  # the Session restore contract on an offloaded model
    s._snap, s._pruned = weight_snapshot(m).__enter__(), True
    dense = state(m)
    with m.onload(0, write=True):
        m.layout.linears(0)["self_attn.q_proj"].weight.data.zero_()
    Session.restore(s)
    assert same(state(m), dense)


# ----------------------------------------------------------------------------- load_model

def _save_tiny(tmp_path, kind="llama"):
    """A tiny model saved as a HF directory with a word-level tokenizer (no network, no SmolLM2)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    m = tiny_model(kind)
    d = tmp_path / f"tiny-{kind}"
    m.save_pretrained(d, safe_serialization=True)
    tk = Tokenizer(models.WordLevel({str(i): i for i in range(256)}, unk_token="0"))
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="0").save_pretrained(d)
    return d


@pytest.fixture
def tiny_dir(tmp_path):
    return _save_tiny(tmp_path)


@pytest.mark.parametrize("kind", ["qwen2", "gemma3", "opt"])
def test_disk_load_other_families_matches_in_memory(tmp_path, kind):
    from prunekit.core.loading import load_model
    d = _save_tiny(tmp_path, kind)
    ids = tiny_calib(2, 16).input_ids
    out = {}
    for mode in ("none", "disk"):
        rt = load_model(str(d), "cpu", "fp32", offload=mode)
        with torch.no_grad():
            out[mode] = rt.model(input_ids=ids).logits
    assert torch.equal(out["disk"], out["none"])


@pytest.mark.parametrize("metric", ["wanda", "sparsegpt"])
def test_load_model_offload_modes_give_bit_identical_masks(tiny_dir, metric):
    from prunekit.core.loading import load_model
    ids = tiny_calib(4, 24).input_ids
    out = {}
    for mode in ("none", "cpu", "disk"):
        m = load_model(str(tiny_dir), "cpu", "fp32", offload=mode)
        assert (m.offloader is None) == (mode == "none")
        assert not any(k.startswith("prunekit") for k in vars(m.model))  # nothing hung on the model
        if mode == "disk":  # blocks really are not in memory between uses
            assert m.layout.linears(0)["self_attn.q_proj"].weight.device.type == "meta"
        prune_model(m, ids, 0.5, metric, batch_size=2, progress=False)
        out[mode] = weights(m)
        # the plain forward (perplexity path) onloads blocks through hooks and agrees
        with torch.no_grad():
            out[mode]["logits"] = m.model(input_ids=ids[:2]).logits
    for mode in ("cpu", "disk"):
        for k, v in out["none"].items():
            assert torch.equal(out[mode][k], v), (mode, k)


def test_load_model_bad_offload_inputs(tiny_dir, tmp_path, monkeypatch):
    import prunekit.core.offload as off
    from prunekit.cli import main
    from prunekit.core.loading import load_model
    with pytest.raises(PrunekitError, match="none, cpu, disk, auto"):
        load_model(str(tiny_dir), "cpu", offload="ram")
    bad = tmp_path / "file"
    bad.write_text("not a directory")
    monkeypatch.setenv("PRUNEKIT_CACHE", str(bad / "cache"))
    with pytest.raises(PrunekitError, match="writable cache directory"):
        load_model(str(tiny_dir), "cpu", offload="disk")
    assert main(["eval", "--model", str(tiny_dir), "--offload", "disk", "--eval", ""]) == 2
    assert main(["eval", "--model", str(tiny_dir), "--offload", "ram", "--eval", ""]) == 2
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(off, "free_bytes", lambda dev: 1000)
    monkeypatch.setattr("prunekit.core.loading.free_bytes", off.free_bytes)
    with pytest.raises(PrunekitError, match=r"one decoder block .* needs .* GiB .* has .* GiB free"):
        load_model(str(tiny_dir), "cpu", offload="cpu")


def test_auto_rule(monkeypatch, tiny_dir):
    import prunekit.core.offload as off
    from prunekit.core.loading import load_model
    cpu = torch.device("cpu")
    assert off.estimate_auto(100, 0, cpu) in ("none",)
    monkeypatch.setattr(off, "free_bytes", lambda dev: 1 << 40 if dev.type == "cpu" else 120)
    fake_cuda = torch.device("cuda")
    assert off.estimate_auto(100, 0, fake_cuda) == "cpu"      # 130 > 120 on the device, fits in RAM
    assert off.estimate_auto(90, 0, fake_cuda) == "none"      # 117 <= 120
    monkeypatch.setattr(off, "free_bytes", lambda dev: 300_000)
    monkeypatch.setattr("prunekit.core.loading.free_bytes", off.free_bytes)
    assert off.estimate_auto(300_000, 0, cpu) == "disk"
    # one 147 kB block fits in 300 kB, the 0.75 MB model does not: disk
    m = load_model(str(tiny_dir), "cpu", "fp32", offload="auto")
    assert m.offload_mode == "disk"


def test_save_model_from_disk_offload_reads_back(tiny_dir, tmp_path):
    from prunekit.core.loading import load_model
    from prunekit.core.saving import save_model
    m = load_model(str(tiny_dir), "cpu", "fp32", offload="disk")
    prune_model(m, tiny_calib(4, 16).input_ids, 0.5, "wanda", batch_size=2, progress=False)
    want = weights(m)
    save_model(m, tmp_path / "saved")
    back = load_model(str(tmp_path / "saved"), "cpu", "fp32", offload="none")
    got = weights(back)
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["wanda", "sparsegpt"])
def test_smollm2_masks_bit_identical_across_offload_modes(metric):
    """M2's equivalence half on the real model: 2 x 64 calibration tokens keep it cheap."""
    from prunekit.core.loading import load_model
    ids = torch.randint(0, 49152, (2, 64), generator=torch.Generator().manual_seed(0))
    out = {}
    for mode in ("none", "cpu", "disk"):
        m = load_model("smollm2-135m", "cpu", "fp32", offload=mode)
        prune_model(m, ids, 0.5, metric, batch_size=2, progress=False)
        out[mode] = {k: w == 0 for k, w in weights(m).items()}
        del m
    for mode in ("cpu", "disk"):
        assert all(torch.equal(out[mode][k], out["none"][k]) for k in out["none"]), mode
