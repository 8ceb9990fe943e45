"""A progress bar that never makes the host wait for the device between its logging steps."""

from __future__ import annotations

import math
import sys

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import _update_n

# Values logged without prog_bar (so Lightning does not read them back every step) and shown here.
SHOWN = ("train/loss_step", "train/loss_epoch", "train/img_s")


def on_terminal() -> bool:
    """Whether the progress bar's stream (stderr) is a terminal: redirected to a file or a pipe,
    a bar is only carriage returns and cursor-movement codes in the log."""
    stream = sys.stderr
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


class SyncFreeProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar, whose numbers (loss, images/s) are read back only at logging steps
    (``trainer.log_every_n_steps``) and epoch ends; the bar itself moves every batch."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        bar, n = self.train_progress_bar, batch_idx + 1
        if bar is None or not self._should_update(n, bar.total):
            return
        _update_n(bar, n)
        every = max(int(trainer.log_every_n_steps or 0), 1)
        if trainer.global_step % every == 0 or (bar.total is not None and n >= bar.total):
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        items = super().get_metrics(trainer, pl_module)
        for key in SHOWN:
            value = trainer.callback_metrics.get(key)
            if value is not None and not math.isnan(float(value)):
                items[key] = float(value)
        return items
