"""Start a run from another run's weights (fine-tuning / retraining), not its training state."""

from __future__ import annotations

import logging
import pickle
import textwrap
from pathlib import Path

import torch

from chexnet_pl.errors import WeightsError

log = logging.getLogger(__name__)

HEAD_PREFIX = "net.classifier."


def read_checkpoint(path: str | Path) -> dict:
    """``torch.load(weights_only=True)``: a checkpoint needing arbitrary unpickling is refused,
    and a damaged file (truncated, empty, not a checkpoint) is said to be one."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (truncated zip), EOFError, ...
        raise checkpoint_load_error(path, exc) from exc
    if not isinstance(checkpoint, dict):
        raise WeightsError(
            f"{path} is not a checkpoint: it holds a {type(checkpoint).__name__}, not the "
            "dictionary of weights and settings a run saves"
        )
    return checkpoint


def checkpoint_load_error(path: str | Path, exc: BaseException) -> WeightsError:
    """What a failed ``torch.load`` of ``path`` means for the user, in one sentence."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in text:
        detail = next((line.strip() for line in text.splitlines() if "Unsupported global" in line),
                      "")  # fmt: skip
        name = detail.split("GLOBAL", 1)[-1].split(" was not", 1)[0].strip() if detail else ""
        return WeightsError(
            f"{path} needs arbitrary unpickling to load ({name or 'a Python object'} is not plain "
            "weights), which is refused: only checkpoints loadable with weights_only=True are read"
        )
    reason = textwrap.shorten(text.splitlines()[0] if text.strip() else "", 120) or "no data"
    return WeightsError(
        f"{path} is damaged or not a checkpoint ({type(exc).__name__}: {reason}). A file cut short "
        "(a copy or save that did not finish) reads like this: copy it again, or use the run's "
        "other checkpoint (checkpoints/last.ckpt or best.ckpt)."
    )


def init_from_checkpoint(model: torch.nn.Module, path: str | Path) -> None:
    """Copy a checkpoint's weights into ``model``; a head of another class count is reinitialised."""
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
    if head_mismatch:
        log.warning(
            "init_from %s: its head has %d outputs, this model has %d; reinitialising the classifier only%s",
            path, state[HEAD_PREFIX + "weight"].shape[0], own[HEAD_PREFIX + "weight"].shape[0],
            " (and the auxiliary classifiers' output layers)" if len(head_prefixes) > 1 else "",
        )  # fmt: skip
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
