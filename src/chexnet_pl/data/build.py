"""A data module built from plain settings — a checkpoint's data settings, a ``data=<dataset>``
config, a pooled dataset's members — with what they leave out taken from the dataset's shipped
config."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from hydra.utils import get_class

from chexnet_pl.errors import DataError
from chexnet_pl.shipped import shipped_data

# The data module of checkpoints that do not name theirs (written before datasets were data).
DEFAULT_DATAMODULE = "chexnet_pl.data.nih.NIHDataModule"
TARGET = "_target_"


def build_datamodule(settings: Mapping[str, Any]):
    """A data module from plain settings with ``_target_`` (a checkpoint's data settings, or a
    ``data=<dataset>`` config); None values of keys its class does not take are dropped."""
    settings = {k: v for k, v in settings.items() if k == TARGET or not k.startswith("_")}
    target = settings.pop(TARGET, None) or DEFAULT_DATAMODULE
    try:
        cls = get_class(target)
    except (ImportError, ValueError) as exc:
        raise DataError(f"data module {target!r} cannot be imported ({exc})") from exc
    accepted = {
        name
        for klass in cls.__mro__
        if "__init__" in vars(klass)
        for name in inspect.signature(klass.__init__).parameters
    }
    settings = {k: v for k, v in settings.items() if v is not None or k in accepted}
    # What the settings leave out (a checkpoint written before a setting existed, a value left
    # unset): the shipped value of the dataset's config.
    defaults = shipped_data(target)
    for key, value in defaults.items():
        if key in accepted and key not in settings:
            settings[key] = value
        elif isinstance(value, dict) and isinstance(settings.get(key), Mapping):
            settings[key] = {**value, **settings[key]}  # a nested key added since
    return cls(**settings)
