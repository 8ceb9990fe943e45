"""What a trained model takes, carried by the model as timm's pretrained config is: the image
size it was trained at, the smallest size its backbone takes, the normalisation its ImageNet
weights expect, and the names of its outputs.

Every command asks ``input_size`` what size to run a model at; none resolves it on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from chexnet_pl.errors import ChexnetError, ConfigError
from chexnet_pl.models.backbones import backbone_spec


@dataclass(frozen=True)
class InputContract:
    backbone: str
    image_size: int | None  # the size it was trained at; None: not trained (built in Python)
    min_size: int  # the smallest square image its backbone takes, in pixels
    mean: tuple[float, ...]  # normalisation of the 3-channel input in [0, 1]
    std: tuple[float, ...]
    class_names: tuple[str, ...]  # its outputs, in order


def input_contract(hparams: Mapping[str, Any]) -> InputContract:
    """The contract of a model with these hyperparameters (a checkpoint's, or a module's)."""
    spec = backbone_spec(hparams["backbone"])
    size = hparams.get("image_size")
    return InputContract(
        backbone=str(hparams["backbone"]),
        image_size=int(size) if size is not None else None,
        min_size=spec.min_size,
        mean=spec.mean,
        std=spec.std,
        class_names=tuple(str(name) for name in hparams.get("class_names") or ()),
    )


def input_size(
    model: Any,
    requested: int | None = None,
    setting: str = "image_size",
    error: type[ChexnetError] = ConfigError,
) -> int:
    """The image size to run ``model`` at: ``requested`` (a command's ``setting``), else the size
    it was trained at; one its backbone cannot take is an ``error`` naming ``setting``."""
    contract = model.input_contract
    size = contract.image_size if requested is None else requested
    if size is None:
        raise error(f"the model does not say what image size it was trained at; give {setting}=")
    size = int(size)
    if size < contract.min_size:
        raise error(
            f"{contract.backbone} cannot take {size} px images (its smallest input is "
            f"{contract.min_size} px); give a larger {setting}="
        )
    return size


class InputNormalizer(nn.Module):
    """1xHxW uint8 (or float in [0, 1]) grayscale → 3-channel float normalised by mean/std."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std


def create_normalizer(name: str) -> InputNormalizer:
    spec = backbone_spec(name)
    return InputNormalizer(spec.mean, spec.std)
