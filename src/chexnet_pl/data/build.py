"""A data module from plain settings with ``_target_``: a checkpoint's data settings, a
``data=<dataset>`` config, or a pooled dataset's member; what they leave out is the shipped value
of that dataset's config (``conf/data/<dataset>.yaml``)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from chexnet_pl.components import DEFAULT_DATAMODULE, TARGET
from chexnet_pl.config_defaults import shipped_data
from chexnet_pl.errors import DataError


def build_datamodule(settings: Mapping[str, Any]):
    """The data module ``settings[_target_]`` (NIH's when absent) built from ``settings``; None
    values of keys its class does not take are dropped, keys it takes but ``settings`` lacks
    (a setting added since, a value left unset) get the shipped value."""
    from hydra.utils import get_class

    settings = {k: v for k, v in settings.items() if k == TARGET or not k.startswith("_")}
    target = settings.pop(TARGET, None) or DEFAULT_DATAMODULE
    try:
        cls = get_class(target)
    except (ImportError, ValueError) as exc:
        raise DataError(f"data module {target!r} cannot be imported ({exc})") from exc
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    accepted = {
        parameter.name
        for klass in cls.__mro__
        if "__init__" in vars(klass) and klass is not object
        for parameter in list(inspect.signature(klass.__init__).parameters.values())[1:]
        if parameter.kind in named
    }
    settings = {k: v for k, v in settings.items() if v is not None or k in accepted}
    unknown = sorted(k for k in settings if k not in accepted)
    if unknown:
        raise DataError(
            f"data settings {unknown} are not settings of {target} (it takes "
            f"{', '.join(sorted(accepted))}); remove "
            "them, or give the data settings on the command line (data=<dataset> data.root=...)"
        )
    for key, value in shipped_data(target).items():
        if key in accepted and key not in settings:
            settings[key] = value
        elif isinstance(value, dict) and isinstance(settings.get(key), Mapping):
            settings[key] = {**value, **settings[key]}  # a nested key added since
    return cls(**settings)
