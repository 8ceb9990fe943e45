"""Images per second of training and evaluation, in the progress bar and the loggers.

Lightning's ``ThroughputMonitor`` waits for the GPU after every batch; this one reads the clock
(and waits for the device) only at logging steps (``trainer.log_every_n_steps``), where Lightning
syncs anyway, so measuring does not slow down what it measures. The first batch of each epoch or
evaluation is left out (warm-up, compilation, workers starting).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batch_images(batch: Any) -> int:
    """Images in a batch: its ``img`` tensor's first dimension (shape only, no device read)."""
    if isinstance(batch, dict) and "img" in batch:
        return int(batch["img"].shape[0])
    if isinstance(batch, list | tuple) and batch and torch.is_tensor(batch[0]):
        return int(batch[0].shape[0])
    return 0


class _Clock:
    def __init__(self) -> None:
        self.started: float | None = None
        self.images = 0

    def start(self, device: torch.device) -> None:
        synchronize(device)
        self.started, self.images = time.perf_counter(), 0

    def rate(self, device: torch.device) -> float:
        synchronize(device)
        elapsed = time.perf_counter() - (self.started or 0.0)
        return self.images / elapsed if self.started is not None and elapsed > 0 else math.nan


class Throughput(pl.Callback):
    """Logs ``train/img_s`` (every logging step, and at each epoch's last batch) and
    ``val/img_s`` / ``test/img_s`` (per evaluation)."""

    def __init__(self) -> None:
        self._train = _Clock()
        self._eval = _Clock()
        # every measured interval (images/s) and when it ended (time.time()), for benchmarks
        self.train_rates: list[float] = []
        self.train_marks: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._train = _Clock()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if self._train.started is None:
            self._train.start(pl_module.device)
            return
        self._train.images += batch_images(batch)
        every = max(int(trainer.log_every_n_steps or 0), 1)
        last = batch_idx + 1 >= trainer.num_training_batches
        if trainer.global_step % every == 0 or last:
            rate = self._train.rate(pl_module.device)
            if not math.isnan(rate):
                self.train_rates.append(rate)
                self.train_marks.append(time.time())
                pl_module.log("train/img_s", rate, on_step=True, on_epoch=False, batch_size=1)
            self._train.start(pl_module.device)

    def _eval_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval = _Clock()

    def _eval_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch) -> None:
        if self._eval.started is None:
            self._eval.start(pl_module.device)
        else:
            self._eval.images += batch_images(batch)

    def _eval_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.sanity_checking or not self._eval.images:
            return
        rate = self._eval.rate(pl_module.device)
        pl_module.log(f"{stage}/img_s", rate, prog_bar=stage == "val", batch_size=1)
        log.info("%s: %.0f images/s", stage, rate)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._eval_start(trainer, pl_module)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        self._eval_batch_end(trainer, pl_module, batch)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._eval_end(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._eval_start(trainer, pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._eval_batch_end(trainer, pl_module, batch)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._eval_end(trainer, pl_module, "test")
