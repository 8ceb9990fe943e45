"""Non-finite training loss detection without a device→host sync per step.

Asking ``if not torch.isfinite(loss)`` every step makes the host wait for the accelerator, so
Python can never queue the next step ahead of the running one. Instead the losses stay on the
device and are read once every ``every`` steps (and whenever the caller asks, e.g. before a
checkpoint or validation); the host keeps each pending step's epoch, step and image names, so
the error still says exactly where the first bad loss came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from chexnet_pl.errors import TrainingError

SHOWN_NAMES = 16


@dataclass(frozen=True)
class StepRecord:
    epoch: int
    global_step: int
    batch_idx: int
    names: tuple[str, ...]


class NonFiniteLossGuard:
    """Collects (loss, step record) pairs; ``check`` raises ``TrainingError`` naming the first
    non-finite one. Only ``check`` reads the device."""

    def __init__(self) -> None:
        self._losses: list[torch.Tensor] = []
        self._records: list[StepRecord] = []

    def __len__(self) -> int:
        return len(self._losses)

    def record(
        self, loss: torch.Tensor, epoch: int, global_step: int, batch_idx: int, names: Sequence[str]
    ) -> None:
        self._losses.append(loss.detach().reshape(()))
        self._records.append(StepRecord(epoch, global_step, batch_idx, tuple(names)))

    def check(self) -> None:
        """One sync for all pending steps; forgets them when all were finite."""
        if not self._losses:
            return
        values = torch.stack(self._losses).float()
        finite = torch.isfinite(values)
        if bool(finite.all()):
            self._losses.clear()
            self._records.clear()
            return
        first = int((~finite).nonzero()[0, 0])
        value, where = float(values[first]), self._records[first]
        self._losses.clear()
        self._records.clear()
        names = list(where.names)
        more = " ..." if len(names) > SHOWN_NAMES else ""
        raise TrainingError(
            f"training loss is {value} at epoch {where.epoch}, global step {where.global_step}, "
            f"batch {where.batch_idx}; its images: {names[:SHOWN_NAMES]}{more}. "
            "Lower model.optimizer.lr, or check those images."
        )
