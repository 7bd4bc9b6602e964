"""Compute dtype: the automatic choice (mocked CUDA capability and CPU flags) and bf16 end to end
on a tiny model against fp32 (prune masks, pruned perplexity), statistics staying fp32."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from conftest import needs_data, tiny_calib, tiny_model
from prunekit.core import devices as models
from prunekit.core.engine import Hessian, WandaNorm, sequential
from prunekit.errors import PrunekitError
from prunekit.evaluation.perplexity import perplexity_from_nlls, window_nlls
from prunekit.evaluation.zeroshot import resolve_batch_size
from prunekit.solvers.prune import prune_model


@pytest.mark.parametrize("cap, want", [((7, 5), torch.float16), ((8, 0), torch.bfloat16),
                                       ((9, 0), torch.bfloat16), ((6, 1), torch.float16)])
def test_cuda_dtype_follows_compute_capability(monkeypatch, cap, want):
    # a T4 (7.5) reports bf16 "supported" through emulation: the capability decides, not that flag
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: cap)
    assert models.pick_dtype(None, torch.device("cuda")) == want
    assert models.pick_dtype("auto", torch.device("cuda")) == want
    assert models.pick_dtype("fp32", torch.device("cuda")) == torch.float32


@pytest.mark.parametrize("flags, native", [
    ({"fpu", "avx2", "avx512f"}, False),
    ({"avx2", "avx512f", "avx512_bf16"}, True),
    ({"amx_tile", "amx_bf16"}, True),
    ({"fp", "asimd", "bf16"}, True),   # ARMv8.6 Features line
    (set(), False),                    # no /proc/cpuinfo (macOS, Windows)
])
def test_cpu_precision_follows_native_bf16_flags(monkeypatch, flags, native):
    # a CPU holds weights, calibrates and prunes in fp32 whatever its flags (bf16 pruning moved
    # verdicts at high sparsity); with native bf16 the default evaluates in bf16 ('mixed')
    monkeypatch.setattr(models, "cpu_flags", lambda: set(flags))
    cpu = torch.device("cpu")
    assert models.pick_dtype(None, cpu) == torch.float32
    assert models.pick_eval_dtype(None, cpu) == (torch.bfloat16 if native else None)
    assert models.precision_name(models.pick_dtype(None, cpu), models.pick_eval_dtype(None, cpu)) == \
        ("mixed" if native else "fp32")
    assert models.default_precision(cpu) == ("mixed" if native else "fp32")
    assert models.pick_dtype("mixed", cpu) == torch.float32 and models.pick_eval_dtype("mixed", cpu) == torch.bfloat16
    for explicit, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):  # what was asked, evaluation included
        assert models.pick_dtype(explicit, cpu) == dt and models.pick_eval_dtype(explicit, cpu) is None


def test_cuda_auto_is_not_mixed_but_mixed_evaluates_in_the_fast_dtype(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (7, 5))
    cuda = torch.device("cuda")
    assert models.pick_eval_dtype(None, cuda) is None                    # weights already fp16
    assert models.pick_dtype("mixed", cuda) == torch.float32
    assert models.pick_eval_dtype("mixed", cuda) == torch.float16        # a T4 has no native bf16


def test_cpu_flags_parse_real_cpuinfo():
    flags = models.cpu_flags()
    assert isinstance(flags, set)
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return
    if "avx512_bf16" in text.split():
        assert models.cpu_native_bf16()


def test_unknown_dtype_is_one_line():
    with pytest.raises(PrunekitError, match="unknown dtype"):
        models.pick_dtype("int8", torch.device("cpu"))


def test_zero_shot_batch_size():
    assert resolve_batch_size("auto", torch.device("cuda")) == "auto"   # lm-eval detects it
    assert resolve_batch_size("auto", torch.device("cpu")) == 8
    assert resolve_batch_size("4", "cpu") == 4 and resolve_batch_size(2, "cpu") == 2
    for bad in ("0", "-1", "many", None):
        with pytest.raises(PrunekitError, match="zero-shot batch size"):
            resolve_batch_size(bad, "cpu")


def test_statistics_stay_fp32_in_a_bf16_model():
    model = tiny_model("llama").to(torch.bfloat16)
    seen = {}

    def on_block(i, block, stats):
        for kind, per in stats.items():
            for st in per.values():
                seen.setdefault(kind, set()).add(st.sum.dtype)

    sequential(model, tiny_calib(4, 16).input_ids, collect=("wanda", "hessian"), on_block=on_block,
               modifies=False, progress=False)
    assert seen == {"wanda": {torch.float32}, "hessian": {torch.float32}}
    assert isinstance(WandaNorm, type) and isinstance(Hessian, type)


def _nll(model, ids) -> float:
    return math.log(perplexity_from_nlls(window_nlls(model, ids, 64, progress=False), 64))


# Tolerances (stated): bf16 keeps 8 bits of mantissa, so scores that differ by less than ~0.4 % can
# swap order. On the tiny model, >= 97 % of mask entries agree with fp32 and the pruned model's
# mean NLL is within 1 % of the fp32 pruned model's.
@pytest.mark.parametrize("metric", ["wanda", "sparsegpt"])
def test_bf16_prune_and_eval_match_fp32(metric):
    ref = tiny_model("llama", seed=1)
    low = copy.deepcopy(ref).to(torch.bfloat16)
    calib = tiny_calib(8, 64, seed=2).input_ids
    ids = torch.randint(0, 256, (1, 4 * 64), generator=torch.Generator().manual_seed(3))
    dense_ref, dense_low = _nll(ref, ids), _nll(low, ids)
    assert abs(dense_low - dense_ref) / dense_ref < 0.01
    prune_model(ref, calib, 0.5, metric, progress=False)
    prune_model(low, calib, 0.5, metric, progress=False)
    agree, total = 0, 0
    for (n, a), (_, b) in zip(ref.named_parameters(), low.named_parameters()):
        if a.dim() == 2 and "layers" in n:
            agree += int(((a == 0) == (b == 0)).sum())
            total += a.numel()
            assert float((b == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    assert agree / total >= 0.97, agree / total
    p_ref, p_low = _nll(ref, ids), _nll(low, ids)
    assert abs(p_low - p_ref) / p_ref < 0.01, (p_ref, p_low)
    assert next(low.parameters()).dtype == torch.bfloat16


def _weights(rt):
    return {n: p.detach().clone() for n, p in rt.model.named_parameters()}


@pytest.mark.parametrize("metric", ["wanda", "sparsegpt"])
def test_mixed_prunes_bit_for_bit_as_fp32_and_evaluates_under_bf16_autocast(metric):
    """Mixed precision = the fp32 prune (same weights, bit for bit) + evaluation forwards in bf16.
    The evaluation reference is computed here by hand: the model's logits under an explicit
    ``torch.autocast`` and the mean next-token cross-entropy of each window."""
    import torch.nn.functional as F
    from prunekit.core.runtime import Runtime
    ref = Runtime(tiny_model("llama", seed=1))
    mixed = Runtime(copy.deepcopy(ref.model), eval_dtype=torch.bfloat16)
    assert (ref.precision, mixed.precision) == ("fp32", "mixed")
    calib = tiny_calib(8, 64, seed=2).input_ids
    prune_model(ref, calib, 0.5, metric, progress=False)
    prune_model(mixed, calib, 0.5, metric, progress=False)
    a, b = _weights(ref), _weights(mixed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # calibration never autocasts
    assert next(mixed.model.parameters()).dtype == torch.float32
    ids = torch.randint(0, 256, (1, 3 * 64), generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = mixed.model(input_ids=ids.reshape(3, 64)).logits.float()
    want = torch.stack([F.cross_entropy(logits[w, :-1], ids.reshape(3, 64)[w, 1:]) for w in range(3)])
    got = window_nlls(mixed, ids, 64, progress=False)
    assert torch.allclose(got.float(), want, rtol=1e-3, atol=1e-4), (got, want)
    fp32 = window_nlls(ref, ids, 64, progress=False)
    assert not torch.equal(got, fp32)  # the same weights read differently: bf16 evaluation did happen
    assert (got - fp32).abs().max() / fp32.abs().max() < 0.01


@needs_data
def test_mixed_session_records_its_precision():
    from prunekit.core.runtime import Runtime
    from prunekit.experiments.session import Session
    from conftest import ByteTokenizer
    rt = Runtime(tiny_model("llama"), ByteTokenizer(), name="tiny", eval_dtype=torch.bfloat16)
    sess = Session(model_name="tiny", runtime=rt, calib_samples=4, calib_seqlen=32, eval_datasets=(),
                   batch_size=4, progress=False)
    rec = sess.run("uniform", "wanda", 0.5, evaluate=False)
    assert rec["dtype"] == "mixed" and sess.provenance()["precision"] == "mixed"


@pytest.mark.parametrize("offload", ["cpu", "disk"])
def test_mixed_precision_with_offload_matches_in_memory(tmp_path, offload):
    """--dtype mixed combined with offload: the same fp32 masks and the same bf16-autocast NLLs as
    the in-memory mixed model (autocast follows the execution device, the blocks move in and out)."""
    from conftest import saved_tiny_llama
    from prunekit.core.loading import load_model
    d = saved_tiny_llama(tmp_path / "m", hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2)
    calib = tiny_calib(4, 32, seed=5).input_ids
    ids = torch.randint(0, 200, (1, 2 * 32), generator=torch.Generator().manual_seed(6))
    nll, w = {}, {}
    for mode in ("none", offload):
        rt = load_model(d, dtype="mixed", offload=mode)
        assert rt.precision == "mixed" and rt.dtype == torch.float32
        prune_model(rt, calib, 0.5, "wanda", progress=False)
        nll[mode] = window_nlls(rt, ids, 32, progress=False)
        w[mode] = {}
        for i in range(rt.num_blocks):
            with rt.onload(i):
                w[mode].update({f"{i}.{n}": m.weight.detach().clone() for n, m in rt.layout.linears(i).items()})
        rt.close()
    assert all(torch.equal(w["none"][k], w[offload][k]) for k in w["none"])
    assert torch.equal(nll["none"], nll[offload])
