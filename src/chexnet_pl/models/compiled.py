"""``model.compile``: the training forward through ``torch.compile``, and the time its first
(compiling) step took, logged as ``compile_s``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)


def compile_options(backend: str, mode: str) -> dict[str, str]:
    """``torch.compile``'s options: inductor's ``mode`` unless it is the default; other backends
    take none."""
    return {"mode": mode} if backend == "inductor" and mode != "default" else {}


def compiled_forward(forward: Callable, backend: str, mode: str) -> Callable:
    """``forward`` compiled with ``backend`` (inductor's ``mode``)."""
    log.info(
        "compiling the training forward with torch.compile (backend %s, mode %s)",
        backend, mode if backend == "inductor" else "n/a",
    )  # fmt: skip
    return torch.compile(forward, backend=backend, **compile_options(backend, mode))


class FirstStepClock:
    """The first training step's time, compiling included (``seconds``; None until measured)."""

    def __init__(self) -> None:
        self.seconds: float | None = None
        self._started: float | None = None

    def start(self) -> None:
        if self.seconds is None:
            self._started = time.perf_counter()

    def stop(self, device: torch.device, loggers: list[Any], step: int) -> None:
        """After the step: its time, once the device has finished it, logged as ``compile_s``."""
        if self._started is None:
            return
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.seconds = time.perf_counter() - self._started
        self._started = None
        log.info("first training step, compiling included: %.1f s", self.seconds)
        for logger in loggers:
            logger.log_metrics({"compile_s": self.seconds}, step=step)
