"""The trained network as inference uses it: the backbone's input normalisation, the backbone with
its classifier, and its input contract (image size, normalisation, class names: ``models.input_contract``)
— without the training machinery (Lightning, metrics).

``CheXNetModule`` (training) and ``XrayClassifier`` (what ``load_run`` returns for evaluation,
prediction, heat maps, export and serving) share ``InferenceMethods``, so both turn a uint8 gray
batch into logits the same way; ``XrayClassifier``'s state dict holds the same ``normalizer.*`` and
``net.*`` keys as the module's, so a training checkpoint loads into it unchanged. Importing this
does not import Lightning or torchmetrics, which cost seconds at every command's start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from chexnet_pl.label_sets import NO_FINDING
from chexnet_pl.models.backbones import create_backbone
from chexnet_pl.models.input_contract import InputContract, create_normalizer, input_contract


class Settings(dict):
    """A checkpoint's hyperparameters read as ``hparams.backbone`` or ``hparams.get("backbone")``,
    as Lightning's ``AttributeDict`` reads them."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as exc:
            raise AttributeError(key) from exc


class InferenceMethods:
    """uint8 gray batch → logits / probabilities, for classes with ``normalizer``, ``net``,
    ``hparams`` (``backbone``, ``class_names``, ``image_size``, ``channels_last``) and ``device``."""

    @property
    def input_contract(self) -> InputContract:
        """What the model takes: trained image size, smallest size, mean/std, output names."""
        return input_contract(self.hparams)

    def prepare_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 1xHxW batch (as the data module yields) → normalised float NCHW for ``net``."""
        x = self.normalizer(images)
        if self.hparams.get("channels_last", True):
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of uint8 grayscale images."""
        return self.net(self.prepare_input(images))

    @torch.inference_mode()
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(images.to(self.device))).float()


class XrayClassifier(InferenceMethods, nn.Module):
    """A trained classifier for inference: ``hparams`` are the checkpoint's model settings, with
    ``image_size`` the size it was trained at."""

    def __init__(self, hparams: Mapping[str, Any], class_names: Sequence[str]) -> None:
        super().__init__()
        self.hparams = Settings(hparams)
        self.class_names = list(class_names)
        self.hparams["class_names"] = self.class_names
        self.hparams["include_no_finding"] = NO_FINDING in self.class_names
        backbone = self.hparams["backbone"]
        self.normalizer = create_normalizer(backbone)
        self.net = create_backbone(backbone, len(self.class_names), pretrained=False)
        if self.hparams.get("channels_last", True):
            self.net = self.net.to(memory_format=torch.channels_last)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """The network's weights from a training checkpoint's state dict (its training-only
        entries — loss weights, metric states — are not the network's and are left out)."""
        own = tuple(f"{name}." for name, _ in self.named_children())
        self.load_state_dict({k: v for k, v in state_dict.items() if k.startswith(own)})
