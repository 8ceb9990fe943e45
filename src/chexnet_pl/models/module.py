"""The LightningModule: backbone + masked BCE-with-logits loss, optimizer, plateau schedule, AUROC."""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MaxMetric, MeanMetric

from chexnet_pl.checkpoints.file_io import read_checkpoint
from chexnet_pl.errors import WeightsError
from chexnet_pl.models.compiled import FirstStepClock, compiled_forward
from chexnet_pl.models.input_contract import InputContract
from chexnet_pl.models.loss_guard import NonFiniteLossGuard
from chexnet_pl.models.metrics import IGNORE, PerClassAUROC, mean_finding_auroc
from chexnet_pl.models.network import ChestXrayNet
from chexnet_pl.models.optim import optimizers_for
from chexnet_pl.models.settings import ModelSettings, model_settings

log = logging.getLogger(__name__)
MODEL_ARGS = tuple(f.name for f in fields(ModelSettings))

# Weight of each auxiliary classifier's loss (GoogLeNet's two), as in the GoogLeNet paper.
AUX_LOSS_WEIGHT = 0.3
# How often the training loss is read back to check it is finite, when the trainer logs never.
DEFAULT_CHECK_EVERY = 50


class CheXNetModule(pl.LightningModule):
    """Multilabel chest X-ray classifier: ``net`` (a ``models.network.ChestXrayNet``, the network
    inference uses) with the loss, metrics and optimizers. ``model(images)`` gives ``net``'s
    logits, ``predict_proba`` its sigmoids.

    Every argument is a plain value (saved in hparams) so ``load_from_checkpoint`` rebuilds it.

    Args:
        backbone: a name in ``models.backbones.BACKBONES``.
        class_names: the output names, in order: the data's labels (``train`` passes the data
            module's ``pathologies``, so a dataset's label list needs no change here); stored in
            checkpoints.
        include_no_finding: not a choice: whether ``class_names`` has ``No Finding``, kept in
            hparams for the commands that read it (an argument so checkpoints load).
        image_size: the size of the images it is trained on (``train`` passes the data's), kept
            in checkpoints: every command runs the model at that size (``models.input_contract``).
        pretrained / weights_path / weights_url: ImageNet initialisation (see
            ``models.backbones.create_backbone``).
        optimizer: ``name`` (adam | adamw | sgd, or a ``torch.optim`` class path), ``lr``,
            ``weight_decay``, ``betas`` or ``momentum``/``nesterov`` (``models.optim``).
        scheduler: ``name`` (plateau | cosine | none, or a class path) and its settings; plateau
            watches ``monitor``.
        pos_weight: weight each class's positives by negatives/positives of the training split.
        channels_last: run convolutions in NHWC (faster on CPUs and tensor cores).
        compile: ``torch.compile`` the training forward (``compile_backend``: inductor, or eager
            to check tracing only). Evaluation, prediction and heat maps run the eager network,
            and checkpoints hold the same keys either way.
        compile_mode: inductor's mode: default, reduce-overhead (CUDA graphs), max-autotune,
            max-autotune-no-cudagraphs. Other backends ignore it.

    A label that is NaN (the dataset does not have it, or does not know it for that image) is
    masked in the loss and left out of the AUROC.

    The training step never waits for the device: the loss is checked for NaN/inf once every
    ``trainer.log_every_n_steps`` steps (when Lightning logs anyway), at the end of each epoch
    and before every checkpoint, and the error names the first bad step and its images.
    """

    def __init__(
        self,
        backbone: str,
        pretrained: bool,
        weights_path: str | None,
        weights_url: str | None,
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any],
        pos_weight: bool,
        channels_last: bool,
        compile: bool,
        compile_backend: str,
        compile_mode: str,
        class_names: Sequence[str],
        include_no_finding: bool | None = None,  # not a setting: follows class_names
        image_size: int | None = None,  # not a setting: the data's
    ) -> None:
        super().__init__()
        # Every setting judged in one place (models/settings.py), before anything is built.
        settings = model_settings({k: v for k, v in locals().items() if k in MODEL_ARGS})
        self.settings = settings
        self.save_hyperparameters(_plain(settings.hparams()))
        class_names = settings.classes
        self.class_names = class_names
        self.__dict__["_train_forward"] = None  # set by setup("fit") when compile=true
        self.loss_guard = NonFiniteLossGuard()
        self.first_step = FirstStepClock()  # with compile=true: the compiling step's time
        # Weights come from the checkpoint when loading one; never download again then.
        self.net = ChestXrayNet(
            dict(self.hparams), class_names, pretrained=pretrained, weights_path=weights_path,
            weights_url=weights_url,
        )  # fmt: skip
        self.register_buffer("loss_pos_weight", torch.ones(len(self.class_names)))

        # "disable": torchmetrics' NaN check reads the value back every step (a host sync);
        # non-finite losses are caught by ``loss_guard`` instead.
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.val_auroc = PerClassAUROC(len(self.class_names))
        self.test_auroc = PerClassAUROC(len(self.class_names))
        self.val_auroc_best = MaxMetric()
        self.val_auroc_best.persistent(True)  # the best value survives a resume

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, **kwargs):  # type: ignore[override]
        """As Lightning's, but never fetches ImageNet weights: the checkpoint holds every weight."""
        kwargs.setdefault("pretrained", False)
        kwargs.setdefault("weights_path", None)
        # Its settings are checked before Lightning builds the module from them: a file from
        # elsewhere names no optimizer, scheduler or data module but the project's own.
        read_checkpoint(checkpoint_path, lazy=True)
        try:
            return super().load_from_checkpoint(
                checkpoint_path, map_location=map_location, weights_only=True, **kwargs
            )
        except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError) as exc:
            if isinstance(exc, WeightsError):
                raise
            read_checkpoint(checkpoint_path)  # a damaged or unsafe file: said plainly
            raise  # the file reads: this is another problem, shown as it is

    @property
    def input_contract(self) -> InputContract:
        """``net``'s: trained image size, smallest size, mean/std, output names."""
        return self.net.input_contract

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of uint8 grayscale images (``net``'s)."""
        return self.net(images)

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities for a batch of images (``net``'s)."""
        return self.net.predict_proba(images)

    @property
    def compile_seconds(self) -> float | None:
        """The first (compiling) training step's time; None without compile=true."""
        return self.first_step.seconds

    # -- training ----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.settings.compile and self._train_forward is None:
            # Kept out of the module tree (plain attribute): state_dict keys stay unchanged.
            self.__dict__["_train_forward"] = compiled_forward(
                self.net.forward_with_aux, self.settings.compile_backend, self.settings.compile_mode
            )
        if stage == "fit" and self.hparams.pos_weight and self.trainer is not None:
            weights = torch.as_tensor(self.trainer.datamodule.pos_weight())
            self.loss_pos_weight.copy_(weights)
            log.info(
                "positive class weights: %s",
                dict(zip(self.class_names, weights.tolist(), strict=True)),
            )

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean BCE over the known labels (NaN: masked); with every label known, the plain mean."""
        pos_weight = self.loss_pos_weight if self.hparams.pos_weight else None
        known = ~torch.isnan(labels)
        per_label = nn.functional.binary_cross_entropy_with_logits(
            logits.float(), torch.where(known, labels, 0.0), pos_weight=pos_weight,
            reduction="none",
        )  # fmt: skip
        return (per_label * known).sum() / known.sum().clamp(min=1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        forward = self._train_forward or self.net.forward_with_aux
        logits, aux_logits = forward(self.net.prepare_input(batch["img"]))
        head_loss = self._loss(logits, batch["lab"])
        loss = head_loss
        if aux_logits:  # GoogLeNet's auxiliary classifiers: in the training loss only
            aux_loss = sum(self._loss(aux, batch["lab"]) for aux in aux_logits)
            loss = head_loss + AUX_LOSS_WEIGHT * aux_loss
            self.log("train/aux_loss", aux_loss.detach(), on_step=True, on_epoch=True,
                     batch_size=len(logits))  # fmt: skip
        # No `if not torch.isfinite(loss)` here: that waits for the device every step.
        self.loss_guard.record(loss, self.current_epoch, self.global_step, batch_idx, batch["name"])
        self.train_loss(head_loss.detach())  # comparable across backbones: no auxiliary terms
        # Not prog_bar: Lightning turns progress-bar values into Python numbers every step (a
        # sync); ``callbacks.SyncFreeProgressBar`` shows it at each logging step instead.
        self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, batch_size=len(logits))
        return loss

    def _check_every(self) -> int:
        every = int(getattr(self.trainer, "log_every_n_steps", 0) or 0)
        return every if every > 0 else DEFAULT_CHECK_EVERY

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.settings.compile:
            self.first_step.start()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        every = self._check_every()
        last = batch_idx + 1 >= self.trainer.num_training_batches
        if len(self.loss_guard) >= every or self.global_step % every == 0 or last:
            self.loss_guard.check()
        self.first_step.stop(self.device, self.trainer.loggers, self.global_step)

    def on_train_epoch_end(self) -> None:
        self.loss_guard.check()

    def on_validation_start(self) -> None:
        self.loss_guard.check()  # never validate (or checkpoint) weights a NaN step produced

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.loss_guard.check()

    def _eval_step(
        self, batch: dict, loss_metric: MeanMetric, auroc: PerClassAUROC, stage: str
    ) -> torch.Tensor:
        logits = self(batch["img"])
        loss = self._loss(logits, batch["lab"])
        loss_metric(loss, weight=len(logits))
        auroc.update(
            torch.sigmoid(logits.float()), torch.nan_to_num(batch["lab"], nan=IGNORE).int()
        )
        self.log(
            f"{stage}/loss",
            loss_metric,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(logits),
        )
        return logits

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.val_loss, self.val_auroc, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.test_loss, self.test_auroc, "test")

    def _log_auroc(self, auroc: PerClassAUROC, stage: str) -> torch.Tensor:
        per_class = auroc.compute().reshape(-1)  # torchmetrics squeezes one label's to a scalar
        auroc.reset()
        mean = mean_finding_auroc(per_class, self.class_names)
        undefined = [
            n for n, v in zip(self.class_names, per_class.tolist(), strict=True) if math.isnan(v)
        ]
        if undefined and not self.trainer.sanity_checking:
            log.warning(
                "%s AUROC undefined (no positives or no negatives) for: %s", stage, undefined
            )
        for name, value in zip(self.class_names, per_class, strict=True):
            if not torch.isnan(value):
                self.log(f"{stage}/auroc_{name}", value)
        if not torch.isnan(mean):
            self.log(f"{stage}/auroc", mean, prog_bar=True)
        return mean

    def on_validation_epoch_end(self) -> None:
        mean = self._log_auroc(self.val_auroc, "val")
        if not self.trainer.sanity_checking and not torch.isnan(mean):
            self.val_auroc_best(mean)
            self.log("val/auroc_best", self.val_auroc_best.compute())

    def on_test_epoch_end(self) -> None:
        self._log_auroc(self.test_auroc, "test")

    def configure_optimizers(self) -> dict:
        max_epochs = self.trainer.max_epochs if self._trainer is not None else None
        return optimizers_for(self.parameters(), self.settings, max_epochs)


def _plain(value: Any) -> Any:
    """OmegaConf containers and tuples → plain dicts/lists, so checkpoints hold no config objects."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def shipped_model(**overrides: Any) -> CheXNetModule:
    """``CheXNetModule`` with conf/model/chexnet.yaml's settings, ``overrides`` merged in as on
    the command line (``optimizer={"lr": 3e-4}`` changes the rate only). The YAML downloads
    ImageNet weights (``pretrained: true``); give ``pretrained=False`` for a random network."""
    from chexnet_pl.config_defaults import shipped

    return CheXNetModule(**shipped("model", **overrides))
