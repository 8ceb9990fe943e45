"""The model as it is served: uint8 N×1×H×W in, probabilities (and optionally the class
activation maps of every class, and the pooled penultimate features) out, with the backbone's
normalisation inside.

One module for every consumer — the ONNX and TorchScript exports trace it, and the web service's
PyTorch backend runs it — so the exported graphs and the served PyTorch model are the same
computation.
"""

from __future__ import annotations

import torch
from torch import nn

from chexnet_pl.errors import ServingError
from chexnet_pl.visualization.heatmaps import cam_available, cams_from_features

PROBABILITIES = "probabilities"
CAMS = "cams"
FEATURES = "features"  # the pooled penultimate embedding (N×D): what the classifier reads
INPUT = "images"


class ServedModel(nn.Module):
    """``images`` (uint8 N×1×H×W) → ``probabilities`` (N×K) [, ``cams`` (N×K×H×W in [0, 1])]
    [, ``features`` (N×D: the pooled penultimate embedding, the classifier's input)].

    ``cams=True`` needs a head that is global average pooling + one linear layer (see
    ``visualization.heatmaps``); the maps are those of ``class_activation_maps``.
    """

    def __init__(self, network: nn.Module, cams: bool = False, features: bool = False) -> None:
        super().__init__()
        if cams and not cam_available(network):
            backbone = network.hparams.get("backbone", type(network).__name__)
            raise ServingError(
                f"cams=true needs a backbone whose head is global average pooling + one linear "
                f"layer; {backbone}'s head is {network.head_description}. Export without cams "
                "(cams=false); its heat maps need Grad-CAM, which runs in PyTorch only."
            )
        self.net = network  # a models.network.ChestXrayNet
        self.with_cams = cams
        self.with_features = features
        self.class_names = list(network.class_names)

    @property
    def output_names(self) -> list[str]:
        names = [PROBABILITIES, CAMS] if self.with_cams else [PROBABILITIES]
        return [*names, FEATURES] if self.with_features else names

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        # The normaliser without prepare_input's channels-last copy: the graph as exported.
        features = self.net.forward_features(self.net.normalizer(images))
        pooled = self.net.pre_logits(self.net.pool(features))
        probabilities = torch.sigmoid(self.net.classifier(pooled))
        outputs = [probabilities]
        if self.with_cams:
            outputs.append(
                cams_from_features(features, self.net.classifier.weight, images.shape[-2:])
            )
        if self.with_features:
            outputs.append(pooled)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)
