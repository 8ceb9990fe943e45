"""Optimizer and learning-rate schedule from ``model.optimizer`` / ``model.scheduler``: a class
and the keyword arguments it takes, built when training starts (``configure_optimizers``).
``models/settings.py`` judges the settings; nothing here restates a default."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import torch

from chexnet_pl.models.settings import (
    ModelSettings,
    OptimizerSettings,
    SchedulerSettings,
    class_arguments,
    load_class,
)

log = logging.getLogger(__name__)


def use_fused(setting: bool | str, device_types: Collection[str]) -> bool | None:
    """``fused``: auto → True when every parameter is on CUDA (one kernel per step for all
    parameters instead of several per tensor), else None (the optimizer's own choice)."""
    if setting == "auto":
        return True if device_types and set(device_types) == {"cuda"} else None
    return bool(setting)


def _taken(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that ``cls`` takes as keyword arguments."""
    accepted = class_arguments(cls)
    return {k: v for k, v in values.items() if k in accepted}


def build_optimizer(
    parameters: Iterable[Any], settings: OptimizerSettings | Mapping[str, Any]
) -> torch.optim.Optimizer:
    """``settings.name``'s class with the settings it takes; fused kernels when the parameters
    are on CUDA (``fused: auto``)."""
    if not isinstance(settings, OptimizerSettings):
        settings = OptimizerSettings.from_config(settings)
    parameters = list(parameters)
    devices = {p.device.type for p in parameters if isinstance(p, torch.Tensor)}
    values = {
        "lr": settings.lr, "betas": tuple(settings.betas), "weight_decay": settings.weight_decay,
        "momentum": settings.momentum, "nesterov": settings.nesterov,
        "fused": use_fused(settings.fused, devices), **settings.extra,
    }  # fmt: skip
    cls = load_class(settings.target)
    return cls(parameters, **_taken(cls, values))


def build_scheduler(
    optimizer: torch.optim.Optimizer, settings: SchedulerSettings, max_epochs: int | None
) -> dict[str, Any] | None:
    """Lightning's ``lr_scheduler`` entry (stepped each epoch; ``monitor`` for a scheduler that
    reads a metric), or None for ``none``. A ``T_max`` the class takes is the run's epochs."""
    if settings.target is None:
        return None
    values = {
        "mode": settings.monitor_mode, "factor": settings.factor, "patience": settings.patience,
        "eta_min": settings.eta_min, "T_max": max(int(max_epochs or 1), 1), **settings.extra,
    }  # fmt: skip
    cls = load_class(settings.target)
    entry = {"scheduler": cls(optimizer, **_taken(cls, values)), "interval": "epoch"}
    if settings.steps_on_metric:
        entry["monitor"] = settings.monitor
    return entry


def optimizers_for(
    parameters: Iterable[Any], settings: ModelSettings, max_epochs: int | None
) -> dict[str, Any]:
    """What ``configure_optimizers`` returns: the optimizer, and its schedule if any."""
    optimizer = build_optimizer(parameters, settings.optimizer)
    if optimizer.defaults.get("fused"):
        log.info("fused %s optimizer", type(optimizer).__name__)
    scheduler = build_scheduler(optimizer, settings.scheduler, max_epochs)
    if scheduler is None:
        return {"optimizer": optimizer}
    return {"optimizer": optimizer, "lr_scheduler": scheduler}
