"""What this machine's devices can do, as plain values.

Every choice that differs on a CUDA GPU (the precision, fused optimizers, where the data loader
puts its tensors and how it warps them, the cuDNN and matmul flags, free device memory) is made
by a small function of a ``DeviceCaps``. ``detect_caps()`` reads the real machine; a test on a
CPU passes a faked one and so drives the CUDA branches without a GPU.
"""

from __future__ import annotations

import functools
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class DeviceCaps:
    cuda: bool  # a CUDA device is visible
    cuda_bf16: bool  # ... and it computes in bf16 (Ampere and newer)
    cpu_bf16: bool  # the CPU has native bf16 (AVX512-BF16 or AMX); emulated bf16 is slower

    @property
    def device(self) -> torch.device:
        """Where a model goes when nothing says otherwise: the GPU when there is one."""
        return torch.device("cuda" if self.cuda else "cpu")


def _read_cpuinfo(cpuinfo: str | Path) -> tuple[str, set[str]]:
    """The model name ("" when none) and the flags of ``/proc/cpuinfo`` (none elsewhere)."""
    model, flags, text = "", set(), ""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        pass
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() == "flags":
            flags |= set(value.split())
    return model, flags


def cpu_model_and_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> tuple[str, set[str]]:
    """The CPU's model name and instruction-set flags (for benchmarks' machine lines)."""
    model, flags = _read_cpuinfo(cpuinfo)
    # platform.processor() runs `uname -p` in a process: only where cpuinfo names no model
    return model or platform.processor() or "unknown CPU", flags


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS says)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@functools.cache
def cpu_has_fast_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True where the CPU has native bf16 arithmetic (AVX512-BF16 or AMX); elsewhere bf16 is slower."""
    return bool(_read_cpuinfo(cpuinfo)[1] & {"avx512_bf16", "amx_bf16"})


@functools.cache  # asking CUDA costs milliseconds, and the answer holds for the process
def detect_caps() -> DeviceCaps:
    cuda = torch.cuda.is_available()
    return DeviceCaps(
        cuda=cuda, cuda_bf16=cuda and torch.cuda.is_bf16_supported(), cpu_bf16=cpu_has_fast_bf16()
    )


def pin_memory(requested: bool, caps: DeviceCaps) -> bool:
    """Page-locked host batches only help copies to a GPU."""
    return bool(requested) and caps.cuda


def backend_flags(caps: DeviceCaps) -> dict[str, object]:
    """Flags a training run sets: cuDNN's autotuner and TF32 matmuls, on CUDA only."""
    if not caps.cuda:
        return {}
    return {"cudnn_benchmark": True, "float32_matmul_precision": "high"}


def apply_backend_flags(flags: dict[str, object]) -> None:
    if "cudnn_benchmark" in flags:
        torch.backends.cudnn.benchmark = bool(flags["cudnn_benchmark"])
    if "float32_matmul_precision" in flags:
        torch.set_float32_matmul_precision(str(flags["float32_matmul_precision"]))


def free_memory(
    device: torch.device, mem_get_info: Callable[[torch.device], tuple[int, int]] | None = None
) -> int:
    """Bytes free for new tensors: the GPU's free memory (``torch.cuda.mem_get_info``), or the
    host's available RAM."""
    if device.type == "cuda":
        return int((mem_get_info or torch.cuda.mem_get_info)(device)[0])
    import os

    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
