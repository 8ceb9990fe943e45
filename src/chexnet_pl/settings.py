"""Every setting of a composed config checked before anything is built or trained.

A value read only after training (the test evaluation's ``evaluation.tta``, a heat-map method, a
scheduler read at the first epoch) would otherwise fail hours in, as a traceback. Each check
raises ``ConfigError`` naming the key, the value and what is allowed; the allowed values are the
constants the code that reads the setting uses, so the two cannot drift apart.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from chexnet_pl.cli import instantiate
from chexnet_pl.data.datamodule import CACHE_MODES, MISSING_POLICIES, VIEWS
from chexnet_pl.data.splits import SPLIT_METHODS, SPLITS
from chexnet_pl.errors import ConfigError, shown
from chexnet_pl.evaluation.predictions import TTA_MODES
from chexnet_pl.evaluation.report import THRESHOLD_METHODS
from chexnet_pl.evaluation.runner import EvaluationSettings
from chexnet_pl.evaluation.subgroup_labels import Subgroups
from chexnet_pl.models.backbones import BACKBONES
from chexnet_pl.models.module import OPTIMIZERS, SCHEDULERS
from chexnet_pl.models.precision import check_precision
from chexnet_pl.visualization.heatmaps import METHODS, require_cam

MONITOR_MODES = ("min", "max")
# What a missing mandatory value (``???``) is for, said when it is not given.
MANDATORY_HINTS = {
    "data.root": "the dataset's folder, e.g. data.root=/path/to/nih",
    "ckpt": "a checkpoint: ckpt=outputs/<date>/<time>/checkpoints/best.ckpt",
}
# ReduceLROnPlateau's own arguments, plus what the module reads itself.
PLATEAU_KEYS = (
    "name",
    "monitor",
    *(p for p in inspect.signature(torch.optim.lr_scheduler.ReduceLROnPlateau).parameters),
)
COSINE_KEYS = ("name", "eta_min")


def check_choice(key: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(
            f"{key}={shown(value)} is not a valid setting; use one of: "
            + ", ".join(str(a) for a in allowed)
        )


def check_keys(section: str, keys: Iterable[str], known: Iterable[str]) -> None:
    known = tuple(known)
    unknown = [key for key in keys if key not in known]
    if unknown:
        raise ConfigError(
            f"unknown setting(s) in {section}: {', '.join(unknown)}; it has: {', '.join(known)}"
        )


def check_number(
    key: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive: bool = False,
    integer: bool = False,
) -> None:
    """A number (an integer if ``integer``) within [minimum, maximum] (open if ``exclusive``)."""
    kind = "a whole number" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type:
        raise ConfigError(f"{key}={shown(value)} is not {kind}")
    low_bad = minimum is not None and (value <= minimum if exclusive else value < minimum)
    high_bad = maximum is not None and (value >= maximum if exclusive else value > maximum)
    if low_bad or high_bad:
        low = "-inf" if minimum is None else shown(minimum)
        high = "inf" if maximum is None else shown(maximum)
        brackets = ("(", ")") if exclusive else ("[", "]")
        raise ConfigError(
            f"{key}={shown(value)} is out of range; use {kind} in "
            f"{brackets[0]}{low}, {high}{brackets[1]}"
        )


def check_mandatory(cfg: DictConfig) -> None:
    """Every ``???`` given, and what the recipe lists under ``requires`` (``key: what it is``)."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        hints = [f"{key} ({MANDATORY_HINTS[key]})" if key in MANDATORY_HINTS else key
                 for key in missing]  # fmt: skip
        raise ConfigError(f"required setting(s) not given: {'; '.join(hints)}")
    requires = cfg.get("requires") or {}
    for key, what in requires.items():
        if OmegaConf.select(cfg, key) in (None, ""):
            experiment = _experiment_name()
            raise ConfigError(
                f"{key} is required{f' by experiment={experiment}' if experiment else ''}: {what}"
            )


def _experiment_name() -> str | None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get("experiment")


def check_evaluation(section: Mapping[str, Any] | None, prefix: str = "evaluation") -> None:
    section = dict(section or {})
    known = [f.name for f in fields(EvaluationSettings)]
    check_keys(prefix, section, known)
    settings = EvaluationSettings.from_config(section)
    check_choice(f"{prefix}.tta", settings.tta, TTA_MODES)
    check_choice(f"{prefix}.threshold", settings.threshold, THRESHOLD_METHODS)
    check_precision(settings.precision, f"{prefix}.precision")
    check_number(f"{prefix}.bootstrap_samples", settings.bootstrap_samples, minimum=0, integer=True)
    check_number(f"{prefix}.bootstrap_seed", settings.bootstrap_seed, minimum=0, integer=True)
    check_number(f"{prefix}.confidence", settings.confidence, minimum=0, maximum=1, exclusive=True)
    check_choice(f"{prefix}.plots", settings.plots, (True, False))
    Subgroups.from_settings(settings)  # the subgroup report judges its own settings


def check_model(model: Mapping[str, Any], monitors: Sequence[str]) -> None:
    check_choice("model.backbone", model.get("backbone"), sorted(BACKBONES))
    optimizer = model.get("optimizer") or {}
    check_choice("model.optimizer.name", str(optimizer.get("name", "adam")).lower(), OPTIMIZERS)
    check_number("model.optimizer.lr", optimizer.get("lr"), minimum=0, exclusive=True)
    check_number("model.optimizer.weight_decay", optimizer.get("weight_decay", 0.0), minimum=0)
    if "momentum" in optimizer:
        check_number("model.optimizer.momentum", optimizer["momentum"], minimum=0, maximum=1)
    betas = optimizer.get("betas")
    if betas is not None and str(optimizer.get("name", "adam")).lower() != "sgd":
        if not isinstance(betas, Sequence) or len(betas) != 2:
            raise ConfigError(
                f"model.optimizer.betas={shown(betas)}; give two numbers, e.g. [0.9,0.999]"
            )
        for i, beta in enumerate(betas):
            check_number(f"model.optimizer.betas[{i}]", beta, minimum=0, maximum=1)
    scheduler = model.get("scheduler") or {}
    name = scheduler.get("name", "none")
    check_choice("model.scheduler.name", name, SCHEDULERS)
    if name == "plateau":
        check_keys("model.scheduler (plateau)", scheduler, PLATEAU_KEYS)
        check_choice("model.scheduler.monitor", scheduler.get("monitor", "val/loss"), monitors)
        if "mode" in scheduler:
            check_choice("model.scheduler.mode", scheduler["mode"], MONITOR_MODES)
        check_number("model.scheduler.factor", scheduler.get("factor", 0.1), minimum=0,
                     maximum=1, exclusive=True)  # fmt: skip
        check_number("model.scheduler.patience", scheduler.get("patience", 1), minimum=0,
                     integer=True)  # fmt: skip
    elif name == "cosine":
        check_number("model.scheduler.eta_min", scheduler.get("eta_min", 0.0), minimum=0)


def check_data(data: Mapping[str, Any]) -> None:
    check_choice("data.view_position", data.get("view_position", "all"), VIEWS)
    check_choice("data.missing_images", data.get("missing_images", "error"), MISSING_POLICIES)
    check_choice("data.on_bad_image", data.get("on_bad_image", "error"), MISSING_POLICIES)
    check_choice("data.cache", data.get("cache", "auto"), CACHE_MODES)
    split = data.get("split") or {}
    check_choice("data.split.method", split.get("method", "official"), SPLIT_METHODS)
    check_number("data.split.val_fraction", split.get("val_fraction", 0.1), minimum=0, maximum=1)
    for key in ("image_size", "batch_size"):
        check_number(f"data.{key}", data.get(key), minimum=1, integer=True)
    if data.get("eval_batch_size") is not None:
        check_number("data.eval_batch_size", data["eval_batch_size"], minimum=1, integer=True)
    check_number("data.num_workers", data.get("num_workers", 0), minimum=0, integer=True)
    for name in data.get("decode_check") or ():
        check_choice("data.decode_check[]", name, SPLITS)


def check_callbacks(callbacks: Mapping[str, Any], monitors: Sequence[str]) -> None:
    for name, callback in (callbacks or {}).items():
        if not callback:
            continue
        if callback.get("monitor") is not None:
            check_choice(f"callbacks.{name}.monitor", callback["monitor"], monitors)
            check_choice(f"callbacks.{name}.mode", callback.get("mode", "min"), MONITOR_MODES)
    visualization = (callbacks or {}).get("visualization") or {}
    if visualization:
        check_choice("callbacks.visualization.method", visualization.get("method", "auto"), METHODS)
        check_number("callbacks.visualization.n_images", visualization.get("n_images", 8),
                     minimum=0, integer=True)  # fmt: skip
        check_number("callbacks.visualization.every_n_epochs",
                     visualization.get("every_n_epochs", 1), minimum=1, integer=True)  # fmt: skip


def monitorable_metrics(class_names: Sequence[str]) -> list[str]:
    """The metrics a checkpoint, scheduler or early stop can watch (what the module logs for a
    model whose outputs are ``class_names``)."""
    per_class = [f"val/auroc_{name}" for name in class_names]
    return ["val/auroc", "val/loss", "val/auroc_best", *per_class, "train/loss", "train/loss_epoch"]


def check_train_config(cfg: DictConfig) -> None:
    """The whole ``train`` config, before the data or model are built."""
    check_mandatory(cfg)
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    check_data(container["data"])
    # The label set is the data's: the data module, built as a dry run (it reads nothing until
    # setup), checks its own settings and names the outputs whose metrics can be monitored.
    monitors = monitorable_metrics(instantiate(cfg.data).pathologies)
    check_model(container["model"], monitors)
    check_callbacks(container.get("callbacks") or {}, monitors)
    check_evaluation(container.get("evaluation"))
    if container.get("init_from") and container.get("ckpt_path"):
        raise ConfigError(
            "give init_from= (start from another run's weights) or ckpt_path= (resume a run), "
            "not both"
        )


def check_heatmap_method(model: torch.nn.Module, key: str, method: str) -> None:
    """A method the built model can give (``cam`` needs a pooling + linear head)."""
    check_choice(key, method, METHODS)
    if method == "cam":
        require_cam(model)
