"""Start a run from another run's weights (fine-tuning / retraining), not its training state."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from chexnet_pl.checkpoints.file_io import read_checkpoint
from chexnet_pl.errors import WeightsError

log = logging.getLogger(__name__)

HEAD_PREFIX = "net.classifier."


def init_from_checkpoint(model: torch.nn.Module, path: str | Path) -> None:
    """Copy a checkpoint's weights into ``model``; a head of other classes (another count, or
    the same count of other labels: another dataset's) is reinitialised."""
    checkpoint = read_checkpoint(path)
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise WeightsError(f"{path} has no 'state_dict'; is it a chexnet_pl checkpoint?")
    source_backbone = checkpoint.get("hyper_parameters", {}).get("backbone")
    target_backbone = model.hparams.get("backbone")
    if source_backbone and source_backbone != target_backbone:
        raise WeightsError(
            f"{path} holds a {source_backbone} but this run builds a {target_backbone}; "
            f"set model.backbone={source_backbone} or start from a {target_backbone} checkpoint"
        )
    own = model.state_dict()
    # The layers with one output per class: the classifier, and GoogLeNet's auxiliary ones.
    head_prefixes = tuple(f"net.{name}." for name in model.net.output_layer_names())
    head_mismatch = [
        k
        for k in state
        if k.startswith(head_prefixes) and k in own and state[k].shape != own[k].shape
    ]
    source_classes = checkpoint.get("hyper_parameters", {}).get("class_names")
    if not head_mismatch and source_classes and list(source_classes) != list(model.class_names):
        log.warning(
            "init_from %s: its outputs are other labels (%s...) than this model's (%s...); "
            "reinitialising the classifier", path, list(source_classes)[:3],
            list(model.class_names)[:3],
        )  # fmt: skip
        head_mismatch = [k for k in state if k.startswith(head_prefixes) and k in own]
    elif head_mismatch:
        log.warning(
            "init_from %s: its head has %d outputs, this model has %d; reinitialising the classifier only%s",
            path, state[HEAD_PREFIX + "weight"].shape[0], own[HEAD_PREFIX + "weight"].shape[0],
            " (and the auxiliary classifiers' output layers)" if len(head_prefixes) > 1 else "",
        )  # fmt: skip
    if head_mismatch:
        state = {k: v for k, v in state.items() if not k.startswith(head_prefixes)}
    # Metric states and buffers such as the loss weights belong to the new run.
    state = {k: v for k, v in state.items() if k.startswith("net.")}
    result = model.load_state_dict(state, strict=False)
    missing = [
        k
        for k in result.missing_keys
        if k.startswith("net.") and not (head_mismatch and k.startswith(head_prefixes))
    ]
    if missing or result.unexpected_keys:
        raise WeightsError(
            f"{path} does not fit this model: {len(missing)} missing and {len(result.unexpected_keys)} "
            f"unexpected weight(s), e.g. {(missing + result.unexpected_keys)[:3]}"
        )
    log.info("initialised weights from %s", path)
