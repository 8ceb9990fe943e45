"""``chexnet-export format=safetensors``: the network's weights in a safetensors file (tensors and
their names only: no pickle, no code) and the export's JSON sidecar, which names what rebuilds the
network (``network``: its architecture, backbone, classes, image size) beside what every export
carries (input contract, thresholds and their rule, SHA-256s, and whatever else the sidecar
builder adds). Such a file survives PyTorch and Lightning upgrades: reading it needs neither
``torch.load`` nor Lightning.

Reading one (``checkpoints.runs.load_safetensors_run``; ``chexnet_pl.load``, ``ckpt=`` of the commands) trusts
nothing the files say beyond the project's own names: the architecture must be this project's
classifier, the backbone one of its registry (``models.backbones.BACKBONES``), the sizes whole
numbers, the file's SHA-256 the one its sidecar records, and every tensor the network's by name
and shape. Anything else is a ``WeightsError`` naming the file.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chexnet_pl.errors import WeightsError

log = logging.getLogger(__name__)

FORMAT = "safetensors"
SUFFIX = ".safetensors"
ARCHITECTURE = "ChestXrayNet"  # models.network.ChestXrayNet: the one network it rebuilds
# What exports written before the network was one class name it (the same network, same tensors).
EARLIER_ARCHITECTURES = ("XrayClassifier",)
AGAIN = "export the checkpoint again with: chexnet-export ckpt=<its checkpoint> format=safetensors"


def is_safetensors(path: str | Path) -> bool:
    """Whether ``path`` names a safetensors export (by its suffix)."""
    return Path(path).suffix.lower() == SUFFIX


def network_fields(model: Any, image_size: int) -> dict[str, Any]:
    """What rebuilds ``model`` (a ``ChestXrayNet``) around its weights: the sidecar's
    ``network``."""
    return {
        "architecture": ARCHITECTURE,
        "backbone": str(model.hparams["backbone"]),
        "classes": [str(name) for name in model.class_names],
        "image_size": int(image_size),
        "channels_last": bool(model.hparams.get("channels_last", True)),
    }


def safetensors_bytes(model: Any) -> bytes:
    """The network's weights and buffers (CPU, contiguous) as safetensors bytes, named as in a
    training checkpoint (``net.*``: ``ChestXrayNet.checkpoint_state_dict``)."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.checkpoint_state_dict().items()}
    return save(tensors, metadata={"format": "pt", "architecture": ARCHITECTURE})


def _checked_network(fields: Any, source: Path) -> dict[str, Any]:
    """The sidecar's ``network``, judged before anything is built from it."""
    from chexnet_pl.models.backbones import BACKBONES

    where = f"{source} (its 'network')"
    if not isinstance(fields, dict):
        raise WeightsError(f"{where} is missing or not an object; {AGAIN}")
    architecture = fields.get("architecture")
    if architecture != ARCHITECTURE and architecture not in EARLIER_ARCHITECTURES:
        raise WeightsError(
            f"{where} names the architecture {architecture!r}; only {ARCHITECTURE!r} (this "
            f"project's classifier) is rebuilt, nothing else a file names; {AGAIN}"
        )
    backbone = fields.get("backbone")
    if not isinstance(backbone, str) or backbone not in BACKBONES:
        raise WeightsError(
            f"{where} names the backbone {backbone!r}, which is not one of chexnet_pl's "
            f"backbones ({', '.join(sorted(BACKBONES))}); {AGAIN}"
        )
    classes = fields.get("classes")
    if (
        not isinstance(classes, list)
        or not classes
        or not all(isinstance(c, str) and c for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise WeightsError(f"{where}: 'classes' must be a list of distinct names; {AGAIN}")
    size = fields.get("image_size")
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 8192:
        raise WeightsError(f"{where}: image_size={size!r} is not a whole number of pixels; {AGAIN}")
    channels_last = fields.get("channels_last", True)
    if not isinstance(channels_last, bool):
        raise WeightsError(f"{where}: channels_last={channels_last!r} is not true/false; {AGAIN}")
    return {"backbone": backbone, "classes": classes, "image_size": size,
            "channels_last": channels_last}  # fmt: skip


def network_from(fields: Any, data: bytes, source: Path) -> torch.nn.Module:
    """A ``ChestXrayNet`` (eval mode, CPU) built from checked ``fields`` with the weights of
    ``data`` (safetensors bytes); every tensor must be the network's, by name and shape."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    from chexnet_pl.config_defaults import shipped
    from chexnet_pl.models.network import ChestXrayNet

    checked = _checked_network(fields, source)
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise WeightsError(
            f"{source} is damaged or not a safetensors file ({exc}); {AGAIN}"
        ) from exc
    settings = shipped("model", backbone=checked["backbone"], pretrained=False)
    settings |= {"image_size": checked["image_size"], "channels_last": checked["channels_last"]}
    model = ChestXrayNet(settings, checked["classes"])
    expected = model.checkpoint_state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [
        f"{k}: {tuple(tensors[k].shape)} in the file, {tuple(v.shape)} in the network"
        for k, v in expected.items()
        if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        detail = "; ".join(
            part
            for part in (
                f"missing {missing[:5]}{' …' if len(missing) > 5 else ''}" if missing else "",
                f"not the network's {unexpected[:5]}" if unexpected else "",
                f"wrong shape {wrong[:3]}" if wrong else "",
            )
            if part
        )
        raise WeightsError(
            f"{source} does not fit the network its sidecar describes ({checked['backbone']}, "
            f"{len(checked['classes'])} classes): {detail}; {AGAIN}"
        )
    model.load_weights(tensors)
    return model.eval()


def read_export(path: str | Path) -> tuple[dict[str, Any], bytes]:
    """The sidecar of a safetensors export (checked against the file: ``card.read_sidecar``) and
    the file's bytes, hashed once more as read so what is loaded is what was checked."""
    from chexnet_pl.errors import ServingError
    from chexnet_pl.serving.sidecar import read_sidecar

    path = Path(path).expanduser()
    try:
        card = read_sidecar(path)
    except ServingError as exc:
        raise WeightsError(str(exc)) from exc
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != card.get("model_sha256"):
        raise WeightsError(f"{path} changed while it was read (SHA-256 differs from its sidecar's); "
                           "read it again")  # fmt: skip
    if card.get("format") != FORMAT:
        raise WeightsError(
            f"{path}'s sidecar says format={card.get('format')!r}, not {FORMAT}; {AGAIN}"
        )
    return card, data


def safetensors_runner(
    fields: dict[str, Any], data: bytes, like: Any, source: Path
) -> Callable[[np.ndarray], list[np.ndarray]]:
    """uint8 N×1×H×W → the outputs of the network rebuilt from ``data`` and wrapped as ``like``
    (a ``ServedModel``) is: the export's check against PyTorch."""
    from chexnet_pl.serving.served_model import ServedModel

    served = ServedModel(
        network_from(fields, data, source), cams=like.with_cams, features=like.with_features
    )

    def run(images: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            outputs = served.eval()(torch.from_numpy(images))
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return [o.numpy() for o in outputs]

    return run
