"""Backbones with the timm-style contract: ``forward_features`` (last feature map) and
``forward_head`` (global pooling + linear classifier), so heat maps need no private hooks.

ImageNet weights come from torchvision's own loader, or from a local file; preprocessing
(mean, std) travels with the backbone in ``InputNormalizer``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from chexnet_pl.errors import WeightsError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one torchvision architecture as a feature extractor."""

    constructor: Callable[..., nn.Module]
    weights: torchvision.models.WeightsEnum
    num_features: int
    features: Callable[[nn.Module], nn.Module]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


class _DenseNetFeatures(nn.Module):
    """DenseNet's ``features`` followed by the final ReLU that torchvision applies in forward."""

    def __init__(self, densenet: nn.Module) -> None:
        super().__init__()
        self.body = densenet.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x))


BACKBONES: dict[str, BackboneSpec] = {
    "densenet121": BackboneSpec(
        constructor=torchvision.models.densenet121,
        weights=torchvision.models.DenseNet121_Weights.IMAGENET1K_V1,
        num_features=1024,
        features=_DenseNetFeatures,
    ),
}

# torchvision's DenseNet files (and arnoweng/CheXNet's) use the old names "norm.1", "conv.2".
_OLD_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.[^.]+)$")


def remap_legacy_densenet_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``...denselayer1.norm.1.weight`` → ``...denselayer1.norm1.weight``; other keys unchanged."""
    remapped = {}
    for key, value in state_dict.items():
        match = _OLD_DENSENET_KEY.match(key)
        remapped[match.group(1) + match.group(2) if match else key] = value
    return remapped


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


class ChestXrayNet(nn.Module):
    """A backbone's features, global average pooling and a new linear classifier (logits out)."""

    def __init__(self, features: nn.Module, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.num_features = num_features
        self.classifier = nn.Linear(num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(features, 1), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path} (model.weights_path)")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for bad files
        raise WeightsError(
            f"cannot load {path} as a weights file: {type(exc).__name__}: {str(exc).splitlines()[0]}. "
            "Only plain state_dict files are read (weights_only=True) — no arbitrary pickles."
        ) from exc
    if (
        isinstance(loaded, dict)
        and "state_dict" in loaded
        and isinstance(loaded["state_dict"], dict)
    ):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise WeightsError(f"{path} does not hold a state_dict (found {type(loaded).__name__})")
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def _download_state_dict(name: str, spec: BackboneSpec, url: str | None) -> dict[str, torch.Tensor]:
    url = url or spec.weights.url
    try:
        return torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=True, check_hash=True
        )
    except (URLError, OSError, RuntimeError) as exc:
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        raise WeightsError(
            f"could not fetch ImageNet weights for {name} from {url} ({exc}). Either go online "
            f"once (the file is then cached at {cache}), or download {Path(url).name} elsewhere and "
            f"give it as model.weights_path=/path/to/{Path(url).name}; or train from scratch "
            "with model.pretrained=false."
        ) from exc


def create_backbone(
    name: str,
    num_classes: int,
    pretrained: bool = False,
    weights_path: str | None = None,
    weights_url: str | None = None,
) -> ChestXrayNet:
    """Build ``name`` with a new ``num_classes`` head, ImageNet-initialised when asked.

    ``weights_path`` (a local ImageNet state_dict) wins over downloading; ``weights_url``
    replaces torchvision's URL (a mirror).
    """
    if name not in BACKBONES:
        raise WeightsError(f"unknown backbone {name!r}; available: {sorted(BACKBONES)}")
    spec = BACKBONES[name]
    network = spec.constructor(weights=None)
    if weights_path or pretrained:
        if weights_path:
            state_dict = _read_state_dict(Path(weights_path).expanduser())
        else:
            state_dict = _download_state_dict(name, spec, weights_url)
        state_dict = remap_legacy_densenet_keys(state_dict)
        try:
            result = network.load_state_dict(state_dict, strict=False)
        except RuntimeError as exc:  # tensor shape mismatches
            raise WeightsError(
                f"weights for {name} do not fit the architecture: {str(exc)[:300]}"
            ) from exc
        # The ImageNet classifier is replaced below; any other mismatch is a wrong file.
        problems = [
            k
            for k in result.missing_keys + result.unexpected_keys
            if not k.startswith("classifier.")
        ]
        if problems:
            raise WeightsError(
                f"weights for {name} do not match the architecture: {len(problems)} key(s) differ, "
                f"e.g. {problems[:3]}. Is this file for {name}?"
            )
        log.info("loaded ImageNet weights into %s from %s", name, weights_path or "torchvision")
    return ChestXrayNet(spec.features(network), spec.num_features, num_classes)


def create_normalizer(name: str) -> InputNormalizer:
    spec = BACKBONES[name]
    return InputNormalizer(spec.mean, spec.std)
