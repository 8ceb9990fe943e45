"""``model.*``: the network, optimizer and scheduler settings ``CheXNetModule`` is built from,
each judged once, here (the module builds these; the pre-flight check builds them as a dry run,
without a network or weights). Their defaults are in conf/model/chexnet.yaml only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from chexnet_pl.errors import ConfigError
from chexnet_pl.labels import NO_FINDING
from chexnet_pl.validation import Problems, settings_from

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("plateau", "cosine", "none")
MONITOR_MODES = ("min", "max")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def logged_metrics(class_names: Sequence[str]) -> list[str]:
    """What ``CheXNetModule`` logs, so what a checkpoint, scheduler or early stop can watch."""
    per_class = [f"val/auroc_{name}" for name in class_names]
    return ["val/auroc", "val/loss", "val/auroc_best", *per_class, "train/loss", "train/loss_epoch"]


@dataclass(frozen=True)
class OptimizerSettings:
    """``model.optimizer``: ``betas`` are Adam/AdamW's, ``momentum``/``nesterov`` SGD's."""

    name: str
    lr: float
    betas: Sequence[float]
    weight_decay: float
    momentum: float
    nesterov: bool
    fused: bool | str  # auto | true | false

    def __post_init__(self) -> None:
        problems = Problems("model.optimizer")
        problems.choice("name", self.name, OPTIMIZERS)
        problems.number("lr", self.lr, minimum=0, exclusive=True)
        problems.number("weight_decay", self.weight_decay, minimum=0)
        problems.number("momentum", self.momentum, minimum=0, maximum=1)
        problems.flag("nesterov", self.nesterov)
        problems.choice("fused", self.fused, ("auto", True, False))
        betas = self.betas
        if not isinstance(betas, Sequence) or isinstance(betas, str) or len(betas) != 2:
            problems.add(f"model.optimizer.betas={betas!r}: give two numbers, e.g. [0.9,0.999]")
        else:
            for i, beta in enumerate(betas):
                problems.number(f"betas[{i}]", beta, minimum=0, maximum=1, exclusive=False)
        problems.raise_if_any()


@dataclass(frozen=True)
class SchedulerSettings:
    """``model.scheduler``: ``plateau`` (ReduceLROnPlateau on ``monitor``), ``cosine`` (to
    ``eta_min`` over the run's epochs) or ``none``."""

    name: str
    monitor: str
    mode: str | None  # min | max; null: max for AUROC metrics, min otherwise
    factor: float
    patience: int
    eta_min: float

    def __post_init__(self) -> None:
        problems = Problems("model.scheduler")
        problems.choice("name", self.name, SCHEDULERS)
        problems.text("monitor", self.monitor)
        if self.mode is not None:
            problems.choice("mode", self.mode, MONITOR_MODES)
        problems.number("factor", self.factor, minimum=0, maximum=1, exclusive=True)
        problems.number("patience", self.patience, minimum=0, integer=True)
        problems.number("eta_min", self.eta_min, minimum=0)
        problems.raise_if_any()

    @property
    def monitor_mode(self) -> str:
        if self.mode is not None:
            return self.mode
        return "max" if "auroc" in self.monitor else "min"


@dataclass(frozen=True)
class ModelSettings:
    """Every argument of ``CheXNetModule``: the ``model.*`` settings and ``class_names``, the
    data's labels in output order (train passes the data module's ``pathologies``)."""

    backbone: str
    pretrained: bool
    weights_path: str | None
    weights_url: str | None
    optimizer: OptimizerSettings
    scheduler: SchedulerSettings
    pos_weight: bool
    channels_last: bool
    compile: bool
    compile_backend: str
    compile_mode: str
    class_names: Sequence[str]  # not a setting: the data module's labels

    @property
    def classes(self) -> list[str]:
        return [str(name) for name in self.class_names]

    def hparams(self) -> dict[str, Any]:
        """Plain values for the checkpoint (``include_no_finding`` follows the classes)."""
        values = asdict(self)
        values["class_names"] = self.classes
        values["include_no_finding"] = NO_FINDING in self.classes
        return values


def model_settings(values: Mapping[str, Any]) -> ModelSettings:
    """``model.*`` (a config section or ``CheXNetModule``'s arguments) judged: the one
    constructor of ``ModelSettings``; every problem in one ``ConfigError``."""
    from chexnet_pl.models.backbones import BACKBONES

    values = {k: v for k, v in values.items() if not str(k).startswith("_")}
    values.pop("include_no_finding", None)  # follows class_names (checkpoints record it)
    problems = Problems("model")
    names = [f.name for f in fields(ModelSettings)]
    for key in problems.unknown_keys(values, names):
        del values[key]
    for name in names:
        if name not in values and name != "class_names":
            problems.add(f"model.{name} is not given")
    if not values.get("class_names"):
        problems.add(
            "model.class_names is not given: the model's outputs are the data's labels in order "
            "(train passes the data module's pathologies)"
        )
    if problems:
        problems.raise_if_any()
    for key, cls in (("optimizer", OptimizerSettings), ("scheduler", SchedulerSettings)):
        if not isinstance(values[key], cls):
            try:
                values[key] = settings_from(cls, values[key], f"model.{key}")
            except ConfigError as exc:
                problems.extend(exc)
                values[key] = None
    problems.choice("backbone", values["backbone"], sorted(BACKBONES))
    for name in ("pretrained", "pos_weight", "channels_last", "compile"):
        problems.flag(name, values[name])
    for name in ("weights_path", "weights_url"):
        problems.text(name, values[name], optional=True)
    path = values["weights_path"]
    if isinstance(path, str) and path and not Path(path).expanduser().is_file():
        problems.add(f"model.weights_path={path} is not a file")
    problems.choice("compile_mode", values["compile_mode"], COMPILE_MODES)
    if problems.text("compile_backend", values["compile_backend"]) and values["compile"] is True:
        _check_compile_backend(values["compile_backend"], problems)
    classes = values.get("class_names")
    if classes is not None and (isinstance(classes, str) or not all(classes)):
        problems.add(f"model.class_names={classes!r}: give a list of names")
    scheduler = values["scheduler"]
    if scheduler is not None and scheduler.name == "plateau" and classes:
        problems.choice("scheduler.monitor", scheduler.monitor, logged_metrics(classes))
    problems.raise_if_any()
    return ModelSettings(**values)


def _check_compile_backend(backend: str, problems: Problems) -> None:
    import torch

    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        problems.choice("compile_backend", backend, known)
