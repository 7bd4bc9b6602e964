"""Compute dtype: the automatic choice (mocked CUDA capability and CPU flags) and bf16 end to end
on a tiny model against fp32 (prune masks, pruned perplexity), statistics staying fp32."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from conftest import tiny_calib, tiny_model
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


@pytest.mark.parametrize("flags, want", [
    ({"fpu", "avx2", "avx512f"}, torch.float32),
    ({"avx2", "avx512f", "avx512_bf16"}, torch.bfloat16),
    ({"amx_tile", "amx_bf16"}, torch.bfloat16),
    ({"fp", "asimd", "bf16"}, torch.bfloat16),   # ARMv8.6 Features line
    (set(), torch.float32),                      # no /proc/cpuinfo (macOS, Windows)
])
def test_cpu_dtype_follows_native_bf16_flags(monkeypatch, flags, want):
    monkeypatch.setattr(models, "cpu_flags", lambda: set(flags))
    assert models.pick_dtype(None, torch.device("cpu")) == want
    assert models.pick_dtype("fp32", torch.device("cpu")) == torch.float32  # reference numerics on request
    assert models.pick_dtype("bf16", torch.device("cpu")) == torch.bfloat16


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
