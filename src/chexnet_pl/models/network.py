"""The network, ``ChestXrayNet``: the backbone's input normalisation, the backbone's parts
(``models.backbones``) with a classifier of one output per class, and its input contract (image
size, normalisation, class names: ``models.input_contract``) — everything inference needs,
without the training machinery (Lightning, metrics).

The LightningModule (``models.module.CheXNetModule``) holds one as ``net``, so a training
checkpoint's weights are ``net.*`` keys; ``load_run`` returns one built from a checkpoint's
settings (``load_weights`` reads those ``net.*`` keys). The normaliser's buffers are not
persistent: they add no state-dict keys. Importing this does not import Lightning or
torchmetrics, which cost seconds at every command's start.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from chexnet_pl.label_sets import NO_FINDING
from chexnet_pl.models.backbones import create_backbone
from chexnet_pl.models.input_contract import InputContract, create_normalizer, input_contract

# Where a training checkpoint's state dict holds the network's weights (``CheXNetModule.net``).
CHECKPOINT_PREFIX = "net."


class Settings(dict):
    """A checkpoint's hyperparameters read as ``hparams.backbone`` or ``hparams.get("backbone")``,
    as Lightning's ``AttributeDict`` reads them."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as exc:
            raise AttributeError(key) from exc


class ChestXrayNet(nn.Module):
    """uint8 1xHxW gray images (or float in [0, 1]) → ``normalizer`` → ``features`` (the last
    feature map) → ``pool`` → ``pre_logits`` → ``classifier`` (logits, one per class).

    ``forward_features`` / ``forward_head`` / ``forward_with_aux`` take the normalised float
    batch ``prepare_input`` gives (heat maps and Grad-CAM need that float input); ``forward``
    takes the images. ``aux_heads`` (GoogLeNet's) read intermediate feature maps and only serve
    the training loss. ``cam_available``: the head is global average pooling + one linear layer,
    so the classifier at every position of ``features`` is an exact class activation map.

    Args:
        hparams: the model's settings (a checkpoint's, or the LightningModule's): ``backbone``
            (a name in ``models.backbones.BACKBONES``), ``image_size`` (the size it was trained
            at, or None), ``channels_last`` (default true); kept as ``hparams``.
        class_names: its outputs, in order.
        pretrained / weights_path / weights_url: ImageNet initialisation
            (``models.backbones.create_backbone``); a checkpoint's weights come by
            ``load_weights``.
    """

    def __init__(
        self,
        hparams: Mapping[str, Any],
        class_names: Sequence[str],
        *,
        pretrained: bool = False,
        weights_path: str | None = None,
        weights_url: str | None = None,
    ) -> None:
        super().__init__()
        self.hparams = Settings(hparams)
        self.class_names = list(class_names)
        self.hparams["class_names"] = self.class_names
        self.hparams["include_no_finding"] = NO_FINDING in self.class_names
        backbone = self.hparams["backbone"]
        self.normalizer = create_normalizer(backbone)
        parts = create_backbone(
            backbone, len(self.class_names), pretrained, weights_path, weights_url
        )
        # Registered in this order: parameters (and so optimizer state) keep the order they had.
        self.features = parts.features
        self.pool = parts.pool
        self.pre_logits = parts.pre_logits
        self.num_features = parts.num_features
        self.classifier = nn.Linear(parts.num_features, len(self.class_names))
        self.aux_heads = nn.ModuleDict(dict(parts.aux_heads))
        self.cam_available = parts.cam_available
        self.head_description = parts.head_description
        if self.hparams.get("channels_last", True):
            for part in (
                self.features,
                self.pool,
                self.pre_logits,
                self.classifier,
                self.aux_heads,
            ):
                part.to(memory_format=torch.channels_last)

    @property
    def input_contract(self) -> InputContract:
        """What the model takes: trained image size, smallest size, mean/std, output names."""
        return input_contract(self.hparams)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def prepare_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 1xHxW batch (as the data module yields) → normalised float NCHW for
        ``forward_features``."""
        x = self.normalizer(images)
        if self.hparams.get("channels_last", True):
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map of a normalised batch (``prepare_input``'s)."""
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from ``forward_features``' map: pooling, ``pre_logits``, the classifier."""
        return self.classifier(self.pre_logits(self.pool(features)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of uint8 grayscale images (or float in [0, 1])."""
        return self.forward_head(self.forward_features(self.prepare_input(images)))

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits of a normalised batch and the auxiliary heads' logits (an empty list for
        backbones without them)."""
        if not self.aux_heads:
            return self.forward_head(self.forward_features(x)), []
        features, taps = self.features.forward_with_taps(x)
        aux_logits = [head(taps[name]) for name, head in self.aux_heads.items()]
        return self.forward_head(features), aux_logits

    def on_normalised_input(self) -> nn.Sequential:
        """The network without its normaliser (the same layers, shared): normalised float batch
        (``prepare_input``'s) → logits, as Grad-CAM perturbs and differentiates it."""
        return nn.Sequential(
            OrderedDict(
                features=self.features, pool=self.pool, pre_logits=self.pre_logits,
                classifier=self.classifier,
            )
        )  # fmt: skip

    @torch.inference_mode()
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities (sigmoids of the logits, float32) for a batch of images."""
        return torch.sigmoid(self(images.to(self.device))).float()

    def output_layer_names(self) -> list[str]:
        """The layers with one output per class (what a different class count reinitialises)."""
        return ["classifier", *(f"aux_heads.{name}.fc2" for name in self.aux_heads)]

    def checkpoint_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under the names a training checkpoint gives them (``net.*``)."""
        return {f"{CHECKPOINT_PREFIX}{k}": v for k, v in self.state_dict().items()}

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """The network's weights from a training checkpoint's state dict (its ``net.*`` keys;
        the training-only entries — loss weights, metric states — are not the network's and
        are left out). Every weight of the network must be there, in its shape."""
        own = {
            k[len(CHECKPOINT_PREFIX) :]: v
            for k, v in state_dict.items()
            if k.startswith(CHECKPOINT_PREFIX)
        }
        self.load_state_dict(own)
