"""The backbones, split into the parts ``models.network.ChestXrayNet`` holds (``BackboneParts``):
the last feature map and the head, so its timm-style ``forward_features`` / ``forward_head`` let
heat maps need no private hooks.

One registry, ``BACKBONES``, maps a name (``model.backbone=``) to a torchvision constructor, its
ImageNet weights, how its network splits into ``features`` (the layer heat maps explain) and a head
whose last linear layer is replaced by one with an output per class, and which ImageNet keys that
replacement drops. What the backbone takes — the smallest input and the normalisation (mean,
std) — is read from torchvision's weights metadata, as timm's pretrained config carries it
(``models.input_contract``). ImageNet weights are read and fitted by ``models.weights``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from chexnet_pl.errors import WeightsError
from chexnet_pl.models.weights import download_state_dict, fit_imagenet_weights, read_state_dict

log = logging.getLogger(__name__)

GLOBAL_AVERAGE_LINEAR = "global average pooling + one linear layer"


@dataclass
class BackboneParts:
    """A torchvision network split as ``models.network.ChestXrayNet`` holds it: ``features``
    (the last feature map) → ``pool`` → ``pre_logits`` → a new linear classifier on
    ``num_features``.

    ``pre_logits`` is what the ImageNet head had between pooling and its last linear layer
    (flattening, dropout; AlexNet's fc6/fc7, ConvNeXt's LayerNorm), kept with its pretrained
    weights. ``cam_available``: the head is global average pooling + one linear layer (dropout
    aside), so the classifier applied at every position of ``features`` is an exact class
    activation map. ``aux_heads`` (GoogLeNet's, their last layer already one output per class)
    read intermediate feature maps; they only serve the training loss.
    """

    features: nn.Module
    num_features: int
    pool: nn.Module = field(default_factory=lambda: nn.AdaptiveAvgPool2d(1))
    pre_logits: nn.Module = field(default_factory=lambda: nn.Flatten(1))
    aux_heads: Mapping[str, nn.Module] = field(default_factory=dict)
    cam_available: bool = True
    head_description: str = GLOBAL_AVERAGE_LINEAR


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one torchvision architecture as the parts of a ``models.network.ChestXrayNet``.

    Args:
        family: the architecture family (``experiment=<family>`` has its training recipe).
        constructor: torchvision's builder, called with ``weights=None`` and ``constructor_kwargs``.
        weights: torchvision's ImageNet weights (their URL is where ``pretrained`` downloads from).
        build: the torchvision network (ImageNet weights loaded or not) and the class count → its
            ``BackboneParts``.
        replaced_keys: prefixes of the ImageNet state_dict keys of the layers ``build`` replaces;
            a weights file may hold them in any shape, or lack them.
        optional_keys: prefixes a weights file may lack (GoogLeNet's aux heads: never trained).
        normalisation: (mean, std) where the network's layers expect other than what the
            weights' metadata says (GoogLeNet's, built without its input transform).

    ``mean``, ``std`` and ``min_size`` (the smallest image the network takes, in pixels) come
    from torchvision's metadata of ``weights``.
    """

    family: str
    constructor: Callable[..., nn.Module]
    weights: torchvision.models.WeightsEnum
    build: Callable[[nn.Module, int], BackboneParts]
    replaced_keys: tuple[str, ...]
    optional_keys: tuple[str, ...] = ()
    constructor_kwargs: Mapping[str, Any] = field(default_factory=dict)
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @property
    def mean(self) -> tuple[float, ...]:
        if self.normalisation is not None:
            return self.normalisation[0]
        return tuple(self.weights.transforms().mean)

    @property
    def std(self) -> tuple[float, ...]:
        if self.normalisation is not None:
            return self.normalisation[1]
        return tuple(self.weights.transforms().std)

    @property
    def min_size(self) -> int:
        """The smallest square image, in pixels, the feature layers reduce to at least 1×1."""
        return max(self.weights.meta["min_size"])


class _DenseNetFeatures(nn.Module):
    """DenseNet's ``features`` followed by the final ReLU that torchvision applies in forward."""

    def __init__(self, densenet: nn.Module) -> None:
        super().__init__()
        self.body = densenet.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x))


def _build_densenet(network: nn.Module, num_classes: int) -> BackboneParts:
    return BackboneParts(_DenseNetFeatures(network), network.classifier.in_features)


def _build_resnet(network: nn.Module, num_classes: int) -> BackboneParts:
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    features = nn.Sequential(OrderedDict((name, getattr(network, name)) for name in names))
    return BackboneParts(features, network.fc.in_features)


def _build_alexnet(network: nn.Module, num_classes: int) -> BackboneParts:
    # The ImageNet head is an MLP on a 6×6 pooled map; fc6 and fc7 keep their weights.
    mlp = network.classifier
    pre_logits = nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(1), dropout6=mlp[0], fc6=mlp[1], relu6=mlp[2],
            dropout7=mlp[3], fc7=mlp[4], relu7=mlp[5],
        )
    )  # fmt: skip
    return BackboneParts(
        network.features,
        mlp[6].in_features,
        pool=network.avgpool,
        pre_logits=pre_logits,
        cam_available=False,
        head_description="6×6 average pooling + a three-layer MLP (fc6, fc7, classifier)",
    )


class _GoogLeNetFeatures(nn.Module):
    """GoogLeNet up to ``inception5b``; ``forward_with_taps`` also returns the inputs of its
    auxiliary classifiers (the outputs of ``inception4a`` and ``inception4d``)."""

    LAYERS = (
        "conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
        "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
        "inception5a", "inception5b",
    )  # fmt: skip
    TAPS = {"inception4a": "aux1", "inception4d": "aux2"}

    def __init__(self, googlenet: nn.Module) -> None:
        super().__init__()
        for name in self.LAYERS:
            self.add_module(name, getattr(googlenet, name))

    def forward_with_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        taps = {}
        for name in self.LAYERS:
            x = getattr(self, name)(x)
            if name in self.TAPS:
                taps[self.TAPS[name]] = x
        return x, taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.LAYERS:
            x = getattr(self, name)(x)
        return x


def _build_googlenet(network: nn.Module, num_classes: int) -> BackboneParts:
    aux_heads = {"aux1": network.aux1, "aux2": network.aux2}
    for head in aux_heads.values():
        head.fc2 = nn.Linear(head.fc2.in_features, num_classes)
    pre_logits = nn.Sequential(OrderedDict(flatten=nn.Flatten(1), dropout=network.dropout))
    return BackboneParts(
        _GoogLeNetFeatures(network),
        network.fc.in_features,
        pre_logits=pre_logits,
        aux_heads=aux_heads,
    )


def _build_efficientnet(network: nn.Module, num_classes: int) -> BackboneParts:
    dropout, linear = network.classifier
    pre_logits = nn.Sequential(OrderedDict(flatten=nn.Flatten(1), dropout=dropout))
    return BackboneParts(network.features, linear.in_features, pre_logits=pre_logits)


def _build_convnext(network: nn.Module, num_classes: int) -> BackboneParts:
    # The pooled vector is layer-normalised before the linear layer: normalising by its own
    # statistics is not linear in the features, so the classifier at each position is no CAM.
    norm, flatten, linear = network.classifier
    pre_logits = nn.Sequential(OrderedDict(norm=norm, flatten=flatten))
    return BackboneParts(
        network.features,
        linear.in_features,
        pre_logits=pre_logits,
        cam_available=False,
        head_description="global average pooling + LayerNorm + linear",
    )


_models = torchvision.models


def _densenet(constructor: Callable[..., nn.Module], weights) -> BackboneSpec:
    return BackboneSpec("densenet", constructor, weights, _build_densenet, ("classifier.",))


def _resnet(constructor: Callable[..., nn.Module], weights) -> BackboneSpec:
    return BackboneSpec("resnet", constructor, weights, _build_resnet, ("fc.",))


BACKBONES: dict[str, BackboneSpec] = {
    "densenet121": _densenet(_models.densenet121, _models.DenseNet121_Weights.IMAGENET1K_V1),
    "densenet169": _densenet(_models.densenet169, _models.DenseNet169_Weights.IMAGENET1K_V1),
    "densenet201": _densenet(_models.densenet201, _models.DenseNet201_Weights.IMAGENET1K_V1),
    "resnet18": _resnet(_models.resnet18, _models.ResNet18_Weights.IMAGENET1K_V1),
    # V2: torchvision's improved recipe (80.9% top-1 against V1's 76.1%), same preprocessing.
    "resnet50": _resnet(_models.resnet50, _models.ResNet50_Weights.IMAGENET1K_V2),
    "alexnet": BackboneSpec(
        "alexnet",
        _models.alexnet,
        _models.AlexNet_Weights.IMAGENET1K_V1,
        _build_alexnet,
        ("classifier.6.",),
    ),  # fmt: skip
    "googlenet": BackboneSpec(
        "googlenet",
        _models.googlenet,
        _models.GoogLeNet_Weights.IMAGENET1K_V1,
        _build_googlenet,
        ("fc.", "aux1.fc2.", "aux2.fc2."),
        optional_keys=("aux1.", "aux2."),
        # torchvision's ImageNet GoogLeNet has transform_input=True: it turns ImageNet-normalised
        # input into (x - 0.5) / 0.5. Normalising by 0.5/0.5 here gives its layers that same input.
        constructor_kwargs={"aux_logits": True, "transform_input": False, "init_weights": True},
        normalisation=((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ),
    "efficientnet_b0": BackboneSpec(
        "efficientnet",
        _models.efficientnet_b0,
        _models.EfficientNet_B0_Weights.IMAGENET1K_V1,
        _build_efficientnet,
        ("classifier.1.",),
    ),  # fmt: skip
    "convnext_tiny": BackboneSpec(
        "convnext",
        _models.convnext_tiny,
        _models.ConvNeXt_Tiny_Weights.IMAGENET1K_V1,
        _build_convnext,
        ("classifier.2.",),
    ),  # fmt: skip
}


def backbone_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise WeightsError(
            f"unknown backbone {name!r}; available: {sorted(BACKBONES)} (model.backbone=...)"
        )
    return BACKBONES[name]


def load_imagenet_weights(
    network: nn.Module, state_dict: Mapping[str, torch.Tensor], name: str
) -> None:
    """Load an ImageNet state_dict into torchvision's ``name`` network (``fit_imagenet_weights``)."""
    fit_imagenet_weights(network, state_dict, name, backbone_spec(name))


def create_backbone(
    name: str,
    num_classes: int,
    pretrained: bool = False,
    weights_path: str | None = None,
    weights_url: str | None = None,
) -> BackboneParts:
    """The parts of ``name`` (its aux heads with ``num_classes`` outputs), ImageNet-initialised
    when asked; ``models.network.ChestXrayNet`` adds the classifier.

    ``weights_path`` (a local ImageNet state_dict) wins over downloading; ``weights_url``
    replaces torchvision's URL (a mirror).
    """
    spec = backbone_spec(name)
    network = spec.constructor(weights=None, **spec.constructor_kwargs)
    if weights_path or pretrained:
        if weights_path:
            state_dict = read_state_dict(weights_path)
        else:
            state_dict = download_state_dict(name, weights_url or spec.weights.url)
        load_imagenet_weights(network, state_dict, name)
        log.info("loaded ImageNet weights into %s from %s", name, weights_path or "torchvision")
    return spec.build(network, num_classes)
