"""Devices and dtypes: where a model computes and in which precision (CUDA when present, never assumed)."""
from __future__ import annotations

from pathlib import Path

import torch

from prunekit.errors import PrunekitError

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


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Compute dtype: given explicitly, or 'auto'/None → bf16 where the hardware computes it natively
    (CUDA compute capability >= 8.0; a CPU with bf16 dot-product instructions), fp16 on older GPUs
    (a T4, 7.5, reports bf16 'supported' but emulates it), fp32 on other CPUs. Statistics and the
    SparseGPT solve run in fp32 whatever this picks."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16
        if device.type == "cpu" and cpu_native_bf16():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise PrunekitError(f"unknown dtype '{dtype}'; use one of fp32, fp16, bf16 or auto")
    return DTYPES[dtype]


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
