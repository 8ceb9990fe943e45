"""Train only the classifier for the first epochs of a fine-tune, then everything."""

from __future__ import annotations

import logging

import pytorch_lightning as pl

log = logging.getLogger(__name__)


class FreezeBackbone(pl.Callback):
    """Freeze ``model.net.features`` (weights and batch-norm statistics) for ``epochs`` epochs."""

    def __init__(self, epochs: int = 1) -> None:
        self.epochs = int(epochs)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        features = pl_module.net.features
        frozen = trainer.current_epoch < self.epochs
        for parameter in features.parameters():
            parameter.requires_grad_(not frozen)
        if frozen:
            features.eval()  # keep batch-norm running statistics as they are
        if trainer.current_epoch in (0, self.epochs):
            log.info(
                "epoch %d: backbone %s", trainer.current_epoch, "frozen" if frozen else "trainable"
            )
