"""Class activation maps from the model contract (``forward_features`` / ``forward_head``).

``cam``: the original CAM (Zhou et al. 2016), exact for a global-average-pool + linear head: the
maps of *every* class come from one forward pass. Backbones whose head is something else
(AlexNet's MLP, ConvNeXt's LayerNorm before the linear layer) say so
(``ChestXrayNet.cam_available``), and asking them for CAM is an error. Grad-CAM and its relatives
come from the ``grad-cam`` package, on the layer that produces ``forward_features``
(``ChestXrayNet.features``) — so every backbone with that contract gets them without hooks into
private layers. ``auto`` is CAM where the head allows it, else Grad-CAM. Every function here takes
the network, a ``models.network.ChestXrayNet`` (a LightningModule's is its ``net``).
"""

from __future__ import annotations

import importlib

import numpy as np
import torch
import torch.nn.functional as F

from chexnet_pl.visualization.methods import (  # noqa: F401  (re-exported: the heat-map API)
    GRAD_METHODS,
    METHODS,
    CAMUnavailableError,
    UnknownMethodError,
    check_method,
)


def cam_available(model) -> bool:
    """Whether ``model``'s (a ``models.network.ChestXrayNet``) head is global average pooling +
    one linear layer (CAM is exact)."""
    return bool(getattr(model, "cam_available", False))


def resolve_method(model, method: str) -> str:
    """``auto`` → ``cam`` where the head allows it, else ``gradcam``; unknown names are an error."""
    check_method(method)
    if method == "auto":
        return "cam" if cam_available(model) else "gradcam"
    return method


def require_cam(model) -> None:
    if cam_available(model):
        return
    backbone = model.hparams.get("backbone", type(model).__name__)
    head = getattr(model, "head_description", "not global average pooling + one linear layer")
    raise CAMUnavailableError(
        f"CAM needs a head that is global average pooling + one linear layer; {backbone}'s head is "
        f"{head}, so the classifier applied at each position is not a class map. Use "
        "method=gradcam (or another Grad-CAM method), or method=auto, which picks Grad-CAM here."
    )


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each map to [0, 1] (a constant map becomes zeros)."""
    flat = maps.flatten(-2)
    low = flat.min(-1, keepdim=True).values
    high = flat.max(-1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-12)).view_as(maps)


@torch.inference_mode()
def class_activation_maps(
    model, images: torch.Tensor, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """CAMs of all classes in one pass: B×K×H×W in [0, 1], upsampled to ``size`` (the input's by default).

    CAM_k = Σ_c w_kc · f_c — the classifier applied at every position of the last feature map.
    Raises ``CAMUnavailableError`` for a head where that is not the class's evidence.
    """
    require_cam(model)
    model.eval()
    features = model.forward_features(model.prepare_input(images.to(model.device))).float()
    return cams_from_features(
        features, model.classifier.weight.float(), size or images.shape[-2:]
    ).cpu()


@torch.inference_mode()
def probabilities_and_cams(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass for both: probabilities (B×K) and every class's CAM (B×K×H×W in [0, 1]
    at the input's size) — what ``predict`` needs, at the cost of one prediction."""
    require_cam(model)
    model.eval()
    features = model.forward_features(model.prepare_input(images.to(model.device)))
    probabilities = torch.sigmoid(model.forward_head(features).float())
    maps = cams_from_features(features.float(), model.classifier.weight.float(), images.shape[-2:])
    return probabilities.cpu(), maps.cpu()


def cams_from_features(
    features: torch.Tensor, classifier_weight: torch.Tensor, size: tuple[int, int] | torch.Size
) -> torch.Tensor:
    """B×C×h×w features and the K×C classifier weight → B×K×H×W maps in [0, 1] at ``size``.

    Plain tensor operations only, so exported graphs (ONNX, TorchScript) compute the same maps."""
    maps = torch.einsum("kc,bchw->bkhw", classifier_weight, features)
    maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    return _normalise(maps)


def grad_cam(
    model, images: torch.Tensor, class_index: int, method: str = "gradcam"
) -> torch.Tensor:
    """One class's map per image (B×H×W in [0, 1]) by a ``grad-cam`` method."""
    if check_method(method) not in GRAD_METHODS:
        raise UnknownMethodError(
            f"{method!r} is not a Grad-CAM method; use one of {tuple(GRAD_METHODS)}"
        )
    model.eval()
    # Grad-CAM sets requires_grad on its input: the normalised float batch, which the network
    # without its normaliser takes (score and ablation CAM perturb that input).
    inputs = model.prepare_input(images.to(model.device)).contiguous()
    grad_cam_package = importlib.import_module("pytorch_grad_cam")
    explainer_class = getattr(grad_cam_package, GRAD_METHODS[method])
    target = importlib.import_module("pytorch_grad_cam.utils.model_targets").ClassifierOutputTarget
    network = model.on_normalised_input()
    with explainer_class(model=network, target_layers=[model.features]) as explainer:
        maps = explainer(input_tensor=inputs, targets=[target(class_index)] * len(images))
    return _normalise(torch.from_numpy(np.asarray(maps, dtype=np.float32)))


def heatmaps(
    model, images: torch.Tensor, class_indices: list[int], method: str = "auto"
) -> torch.Tensor:
    """B×len(class_indices)×H×W maps by ``method`` (``cam`` computes all classes in one pass;
    ``auto`` is ``cam`` where the backbone's head allows it, else ``gradcam``)."""
    method = resolve_method(model, method)
    if method == "cam":
        return class_activation_maps(model, images)[:, class_indices]
    return torch.stack([grad_cam(model, images, k, method) for k in class_indices], dim=1)
