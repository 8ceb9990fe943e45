"""Train only the head for the first epochs of a fine-tune, then everything."""

from __future__ import annotations

import logging

import pytorch_lightning as pl

from chexnet_pl.errors import TrainingError
from chexnet_pl.validation import Problems

log = logging.getLogger(__name__)


class FreezeBackbone(pl.Callback):
    """Freeze ``model.net.features`` (weights and batch-norm statistics) for ``epochs`` epochs.

    Every backbone in the registry splits into ``features`` (the convolutional body) and a head
    (its pooling, ``pre_logits`` — AlexNet's fc6/fc7, ConvNeXt's LayerNorm — the classifier and
    GoogLeNet's auxiliary classifiers); the head trains throughout.
    """

    def __init__(self, epochs: int) -> None:
        problems = Problems("callbacks.freeze_backbone")
        problems.number("epochs", epochs, minimum=0, integer=True)
        problems.raise_if_any()
        self.epochs = epochs

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # DDP by default expects a gradient for every parameter; frozen ones would hang the reducer.
        ddp_kwargs = getattr(trainer.strategy, "_ddp_kwargs", None)
        if (
            trainer.world_size > 1
            and ddp_kwargs is not None
            and not ddp_kwargs.get("find_unused_parameters")
        ):
            raise TrainingError(
                "callbacks.freeze_backbone under DDP needs trainer.strategy=ddp_find_unused_parameters_true "
                "(frozen parameters get no gradients)"
            )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        features = pl_module.net.features
        frozen = trainer.current_epoch < self.epochs
        for parameter in features.parameters():
            parameter.requires_grad_(not frozen)
        # Frozen: batch-norm running statistics stay as they are. Lightning does not put modules
        # back into training mode by itself, so unfreezing must.
        features.train(not frozen)
        if trainer.current_epoch in (0, self.epochs):
            log.info(
                "epoch %d: backbone %s", trainer.current_epoch, "frozen" if frozen else "trainable"
            )
