"""``trainer.*``: Lightning's ``Trainer`` arguments, judged before anything is built, with the
project's choices that depend on the device made by functions of a ``DeviceCaps``."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any

from chexnet_pl.config_defaults import HYDRA_KEYS
from chexnet_pl.device import DeviceCaps
from chexnet_pl.errors import ConfigError
from chexnet_pl.models.precision import check_precision, resolve_precision
from chexnet_pl.validation import Problems

log = logging.getLogger(__name__)


def trainer_arguments() -> list[str]:
    import pytorch_lightning as pl

    return [p for p in inspect.signature(pl.Trainer.__init__).parameters if p != "self"]


def trainer_kwargs(section: Mapping[str, Any], caps: DeviceCaps) -> dict[str, Any]:
    """The ``Trainer``'s arguments (``_target_`` kept) for a machine that can do ``caps``:
    ``precision: auto`` resolved for the accelerator, ``sync_batchnorm`` off without CUDA.
    Unknown keys and an unknown precision are one ``ConfigError``."""
    kwargs = dict(section)
    problems = Problems("trainer")
    problems.unknown_keys([k for k in kwargs if k not in HYDRA_KEYS], trainer_arguments())
    accelerator = str(kwargs.get("accelerator"))
    try:
        check_precision(kwargs.get("precision"), "trainer.precision")
    except ConfigError as exc:
        problems.extend(exc)
    problems.raise_if_any()
    kwargs["precision"] = resolve_precision(kwargs["precision"], accelerator, caps)
    if kwargs.get("sync_batchnorm") and (accelerator == "cpu" or not caps.cuda):
        log.info("sync_batchnorm needs GPUs; off for this CPU run")
        kwargs["sync_batchnorm"] = False
    return kwargs
