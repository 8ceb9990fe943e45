"""One precision vocabulary for training and evaluation: Lightning's names.

``auto`` | ``32-true`` | ``bf16-mixed`` | ``16-mixed`` (and ``64-true``); ``auto`` picks bf16 on CUDA
(fp16 where the GPU lacks bf16) and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32 —
emulated bf16 is slower than fp32. ``fp32``/``bf16``/``fp16`` are accepted as short names.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from chexnet_pl.device import DeviceCaps, detect_caps
from chexnet_pl.errors import ConfigError

PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "64-true")
SHORT_NAMES = {"fp32": "32-true", "32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed",
               "16": "16-mixed", "64": "64-true"}  # fmt: skip


@functools.cache
def check_precision(requested: str | int, setting: str = "precision") -> str:
    """The canonical name of ``requested``, or an error naming ``setting`` and the choices."""
    name = SHORT_NAMES.get(str(requested), str(requested))
    if name not in PRECISIONS:
        raise ConfigError(
            f"{setting}={requested!r} is not a precision; use one of {PRECISIONS} "
            f"(or {tuple(SHORT_NAMES)})"
        )
    return name


def resolve_precision(
    requested: str | int, accelerator: str = "auto", caps: DeviceCaps | None = None
) -> str:
    """The precision a run on ``accelerator`` (auto | gpu | cuda | cpu) uses for ``requested``,
    on a machine that can do ``caps`` (this one when not given)."""
    name = check_precision(requested)
    if name != "auto":
        return name
    caps = caps or detect_caps()
    if caps.cuda and accelerator in ("auto", "gpu", "cuda"):
        return "bf16-mixed" if caps.cuda_bf16 else "16-mixed"
    return "bf16-mixed" if caps.cpu_bf16 else "32-true"


def autocast_dtype(
    device_type: str, precision: str, caps: DeviceCaps | None = None
) -> torch.dtype | None:
    """The autocast dtype of inference on ``device_type`` at ``precision``; None runs fp32
    (fp16 autocast on a CPU is slower than fp32)."""
    caps = caps or detect_caps()
    name = resolve_precision(precision, "cuda" if device_type == "cuda" else "cpu", caps)
    if name == "bf16-mixed" and device_type == "cuda" and not caps.cuda_bf16:
        name = "16-mixed"
    if name == "bf16-mixed":
        return torch.bfloat16
    if name == "16-mixed" and device_type == "cuda":
        return torch.float16
    return None


def autocast_context(device: torch.device, precision: str):
    """Autocast for inference on ``device`` at ``precision`` (resolved for that device)."""
    dtype = autocast_dtype(device.type, precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
