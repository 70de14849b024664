"""Compute precision of the backbone: fp32, or bf16 autocast with fp32 master state.

``bf16`` runs the backbone's forward (and so its backward) under ``torch.autocast(dtype=bfloat16)``: matmuls and
the adapters' products in bf16, everything autocast keeps in fp32 (softmax, norms, reductions) in fp32. What is
*stored* stays fp32: adapter parameters (PoLAR's Stiefel factors X, Y and Θ, so the retraction and the orthogonality
checks are exact), the head's posterior and its maths (features leave the backbone as fp32), optimizer states and the
Laplace curvature. ``base_dtype="bf16"`` additionally stores the frozen base ``nn.Linear`` weights in bf16 (half
their memory and bandwidth; autocast then casts nothing on the way in).

``auto`` resolves to bf16 where the device computes it natively (a CPU with avx512_bf16 or AMX, a GPU with
``torch.cuda.is_bf16_supported()``) and to fp32 otherwise; a run records the resolved value.
"""

from __future__ import annotations

import functools
from enum import StrEnum
from pathlib import Path
from typing import Literal

import torch


class Precision(StrEnum):
    FP32 = "fp32"
    BF16 = "bf16"
    AUTO = "auto"


DTYPES = {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16}

#: CPU flags (``/proc/cpuinfo``) of native bf16 arithmetic
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_supports_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has native bf16 instructions (read from ``cpuinfo``; False where there is none)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return any(flag in flags for flag in _BF16_CPU_FLAGS)


def device_supports_bf16(device: torch.device | str = "cpu") -> bool:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_supports_bf16()
    return False


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> Precision:
    """``fp32`` or ``bf16``: ``auto`` becomes bf16 where ``device`` computes it natively."""
    value = Precision(precision)
    if value is Precision.AUTO:
        return Precision.BF16 if device_supports_bf16(device) else Precision.FP32
    return value


def resolved_name(precision: str, device: torch.device | str = "cpu") -> Literal["fp32", "bf16"]:
    """:func:`resolve_precision` as the name a config stores."""
    return "bf16" if resolve_precision(precision, device) is Precision.BF16 else "fp32"
