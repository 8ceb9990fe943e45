"""ImageNet weights for a backbone: read from a local file or torchvision's URL (or a mirror),
old DenseNet key names remapped, and fitted to the architecture with every key accounted for."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol
from urllib.error import URLError

import torch
from torch import nn

from chexnet_pl.checkpoints.file_io import load_file
from chexnet_pl.errors import WeightsError

log = logging.getLogger(__name__)

# torchvision's DenseNet files (and arnoweng/CheXNet's) use the old names "norm.1", "conv.2".
_OLD_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.[^.]+)$")


class WeightsLayout(Protocol):
    """What fitting ImageNet weights needs to know of a backbone (``BackboneSpec`` has it)."""

    family: str
    replaced_keys: tuple[str, ...]
    optional_keys: tuple[str, ...]


def remap_legacy_densenet_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``...denselayer1.norm.1.weight`` → ``...denselayer1.norm1.weight``; other keys unchanged."""
    remapped = {}
    for key, value in state_dict.items():
        match = _OLD_DENSENET_KEY.match(key)
        remapped[match.group(1) + match.group(2) if match else key] = value
    return remapped


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A local weights file (``model.weights_path``): a state_dict, or a checkpoint holding one
    under ``state_dict``; DataParallel's ``module.`` prefix dropped."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path} (model.weights_path)")
    loaded = load_file(path, kind="weights file")
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise WeightsError(f"{path} does not hold a state_dict (found {type(loaded).__name__})")
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def download_state_dict(name: str, url: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights of ``name`` from ``url`` (cached by ``torch.hub``)."""
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


def fit_imagenet_weights(
    network: nn.Module, state_dict: Mapping[str, torch.Tensor], name: str, layout: WeightsLayout
) -> None:
    """Load an ImageNet state_dict into torchvision's ``name`` network; every key must land
    except those of the layers the new head replaces (and the optional ones)."""
    if layout.family == "densenet":
        state_dict = remap_legacy_densenet_keys(dict(state_dict))
    kept = {k: v for k, v in state_dict.items() if not k.startswith(layout.replaced_keys)}
    try:
        result = network.load_state_dict(kept, strict=False)
    except RuntimeError as exc:  # tensor shape mismatches
        raise WeightsError(
            f"weights for {name} do not fit the architecture: {str(exc)[:300]}"
        ) from exc
    may_lack = layout.replaced_keys + layout.optional_keys
    problems = [k for k in result.missing_keys if not k.startswith(may_lack)]
    problems += result.unexpected_keys
    if problems:
        raise WeightsError(
            f"weights for {name} do not match the architecture: {len(problems)} key(s) differ, "
            f"e.g. {problems[:3]}. Is this file for {name}?"
        )
