"""Ctrl-C (SIGINT) during training: save a checkpoint to resume from, then let Lightning stop."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl

log = logging.getLogger(__name__)


class InterruptCheckpoint(pl.Callback):
    """On KeyboardInterrupt, write ``<dirpath>/interrupted.ckpt`` (atomically) and say how to resume."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, KeyboardInterrupt) or trainer.sanity_checking:
            return
        path = self.dirpath / "interrupted.ckpt"
        trainer.save_checkpoint(path)
        log.warning(
            "interrupted at epoch %d, global step %d; saved %s. Resume with ckpt_path=%s",
            trainer.current_epoch, trainer.global_step, path, path,
        )  # fmt: skip
