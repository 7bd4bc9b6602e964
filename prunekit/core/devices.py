"""Devices and dtypes: where a model computes and in which precision (CUDA when present, never assumed)."""
from __future__ import annotations

from pathlib import Path

import torch

from prunekit.errors import PrunekitError
from prunekit.vocabulary import PRECISIONS

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
           "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def pick_device(device: str | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_flags() -> set[str]:
    """CPU feature flags from /proc/cpuinfo (x86 ``flags``, ARM ``Features``); empty where unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, val = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(val.split())
    return set()


# avx512_bf16 / amx_bf16 (x86) and bf16 (ARMv8.6) are bf16 dot-product instructions: the oneDNN
# matmuls then run bf16 at about twice the fp32 rate; elsewhere bf16 is emulated and slower.
_NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def cpu_native_bf16(flags: set[str] | None = None) -> bool:
    return bool((cpu_flags() if flags is None else flags) & _NATIVE_BF16_FLAGS)


def _fast_dtype(device: torch.device) -> torch.dtype | None:
    """The half dtype this device computes natively: bf16 on CUDA >= 8.0 and on a CPU with bf16
    dot-product instructions, fp16 on older GPUs (a T4, 7.5, reports bf16 'supported' but emulates
    it), None on other CPUs."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16
    if device.type == "cpu" and cpu_native_bf16():
        return torch.bfloat16
    return None


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The dtype the weights are held in, and so the dtype of every calibration forward, statistic
    input and pruning decision. 'auto'/None: the device's half dtype on CUDA (the reference codes
    calibrate in fp16 on GPU), fp32 on a CPU (with native bf16 'auto' is 'mixed': fp32 here, bf16
    evaluation, see ``pick_eval_dtype``). 'mixed' is fp32. Norms, Hessians and the SparseGPT solve
    run in fp32 whatever this picks."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda":
            return _fast_dtype(device)
        return torch.float32
    if dtype == "mixed":
        return torch.float32
    if dtype not in DTYPES:
        raise PrunekitError(f"unknown dtype '{dtype}'; use one of {', '.join(PRECISIONS)}")
    return DTYPES[dtype]


def pick_eval_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """The compute dtype of evaluation forwards (perplexity, zero-shot) when it differs from the
    weights' (``torch.autocast``), else None. 'mixed', and 'auto' on a CPU with native bf16:
    bf16 (fp16 on an older GPU). Pruning is where the dtype moves results at high sparsity (a bf16
    calibration changes which weights a collapsed model keeps); evaluating the same pruned weights
    in bf16 moves perplexity by 0.04-0.1 % at 50-60 % sparsity and about 0.5 % in collapse
    (docs/benchmarks.md, mixed precision)."""
    if dtype == "mixed" or (dtype in (None, "auto") and device.type == "cpu"):
        return _fast_dtype(device) or (torch.bfloat16 if dtype == "mixed" else None)
    return None


def precision_name(dtype: torch.dtype, eval_dtype: torch.dtype | None = None) -> str:
    """What a record states: 'bf16', 'fp16', 'fp32', or 'mixed' (fp32 weights and calibration,
    half-precision evaluation)."""
    if eval_dtype is not None and eval_dtype != dtype:
        return "mixed"
    return dtype_name(dtype)


def default_precision(device: torch.device) -> str:
    """The precision ``--dtype auto`` runs on ``device``: 'mixed' on a CPU with native bf16, 'fp32' on
    other CPUs, the half dtype on CUDA."""
    return precision_name(pick_dtype(None, device), pick_eval_dtype(None, device))


def dtype_name(dtype: torch.dtype) -> str:
    """'bf16', 'fp16', 'fp32' (what the JSON record states as the compute dtype)."""
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


def check_device(device: str | None) -> None:
    """cpu, cuda, cuda:N (that GPU present), mps (available) or auto; anything else is an error."""
    import re
    if device in (None, "auto", "cpu"):
        return
    m = re.fullmatch(r"cuda(?::(\d+))?", device)
    if m:
        if not torch.cuda.is_available():
            raise PrunekitError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
            raise PrunekitError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present")
        return
    if device == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise PrunekitError("--device mps: MPS is not available on this machine")
        return
    raise PrunekitError(f"unknown --device '{device}'; use cpu, cuda, cuda:N, mps or auto")
