"""Optimizer and learning-rate schedule from ``model.optimizer`` / ``model.scheduler``
(``models/settings.py`` judges them; nothing here restates a default)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

import torch

from chexnet_pl.models.settings import OptimizerSettings, SchedulerSettings
from chexnet_pl.validation import settings_from


def use_fused(setting: bool | str, device_types: Collection[str]) -> bool | None:
    """``fused``: auto → True when every parameter is on CUDA (one kernel per step for all
    parameters instead of several per tensor), else None (the optimizer's own choice)."""
    if setting == "auto":
        return True if device_types and set(device_types) == {"cuda"} else None
    return bool(setting)


def build_optimizer(
    parameters: Iterable[Any], settings: OptimizerSettings | Mapping[str, Any]
) -> torch.optim.Optimizer:
    """Adam, AdamW, or SGD with momentum; fused kernels when the parameters are on CUDA."""
    if not isinstance(settings, OptimizerSettings):
        settings = settings_from(OptimizerSettings, settings, "model.optimizer")
    parameters = list(parameters)
    devices = {p.device.type for p in parameters if isinstance(p, torch.Tensor)}
    common = {"lr": settings.lr, "weight_decay": settings.weight_decay,
              "fused": use_fused(settings.fused, devices)}  # fmt: skip
    if settings.name == "sgd":
        return torch.optim.SGD(
            parameters, momentum=settings.momentum, nesterov=settings.nesterov, **common
        )
    cls = torch.optim.Adam if settings.name == "adam" else torch.optim.AdamW
    return cls(parameters, betas=tuple(settings.betas), **common)


def build_scheduler(
    optimizer: torch.optim.Optimizer, settings: SchedulerSettings, max_epochs: int | None
) -> dict[str, Any] | None:
    """Lightning's ``lr_scheduler`` entry, or None for ``none``."""
    if settings.name == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=settings.monitor_mode, factor=settings.factor,
            patience=settings.patience,
        )  # fmt: skip
        return {"scheduler": scheduler, "monitor": settings.monitor, "interval": "epoch"}
    if settings.name == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(int(max_epochs or 1), 1), eta_min=settings.eta_min
        )
        return {"scheduler": scheduler, "interval": "epoch"}
    return None
