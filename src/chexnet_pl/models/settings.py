"""``model.*``: the network, optimizer and scheduler settings ``CheXNetModule`` is built from,
each judged once, here (the module builds these; the pre-flight check builds them as a dry run,
without a network or weights). Their defaults are in conf/model/chexnet.yaml only.

The optimizer and the scheduler are a class and its keyword arguments: ``name`` is a short name
(``OPTIMIZERS``, ``SCHEDULERS``) or a class path (``torch.optim.RAdam``); the section's other
settings are passed where the class takes them, and a key added with ``+`` is passed as it is
(``+model.optimizer.amsgrad=true``) when the class takes it. ``models.optim`` builds them.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from chexnet_pl.components import OPTIMIZERS, SCHEDULERS
from chexnet_pl.errors import ConfigError
from chexnet_pl.label_sets import NO_FINDING
from chexnet_pl.validation import Problems, Section

C = TypeVar("C", bound="ClassSettings")
MONITOR_MODES = ("min", "max")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def logged_metrics(class_names: Sequence[str]) -> list[str]:
    """What ``CheXNetModule`` logs, so what a checkpoint, scheduler or early stop can watch."""
    per_class = [f"val/auroc_{name}" for name in class_names]
    return ["val/auroc", "val/loss", "val/auroc_best", *per_class, "train/loss", "train/loss_epoch"]


def load_class(path: str) -> type:
    """The class at ``path`` (``torch.optim.RAdam``); ImportError or AttributeError if none."""
    module, _, name = path.rpartition(".")
    found = getattr(importlib.import_module(module), name)
    if not isinstance(found, type):
        raise AttributeError(f"{path} is not a class")
    return found


def class_arguments(cls: type) -> set[str]:
    """The keyword arguments ``cls`` takes after its first (the parameters, the optimizer)."""
    parameters = list(inspect.signature(cls).parameters.values())[1:]
    return {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


class ClassSettings(Section):
    """A class and its keyword arguments, every key of its conf/model/chexnet.yaml section
    given: ``name`` (a short name of ``short``, or the path of a ``base`` class, e.g.
    ``example``); the other keys are passed where the class takes them, and a key the YAML does
    not have is kept in ``extra`` when the class takes it (``+model.optimizer.amsgrad=true``)."""

    complete = True
    section = ""  # optimizer | scheduler
    short: Mapping[str, Any] = {}
    base = example = ""

    @classmethod
    def from_config(cls: type[C], given: Mapping[str, Any] | None) -> C:
        """The section judged: every problem in one ``ConfigError``."""
        from chexnet_pl.config_defaults import shipped

        keys = shipped("model")[cls.section]
        given = dict(given or {})
        extra = {k: given.pop(k) for k in list(given) if k not in keys}
        settings = cls.build(given, keys)
        if extra:
            accepted = class_arguments(load_class(settings.target)) if settings.target else set()
            problems = Problems(cls.prefix)
            problems.unknown_keys(extra, [*keys, *sorted(accepted - set(keys))])
            problems.raise_if_any()
        settings.extra = extra
        return settings

    def check(self, problems: Problems) -> None:
        if isinstance(self.name, str) and self.name in self.short:
            return
        if not (isinstance(self.name, str) and "." in self.name):
            problems.choice("name", self.name, self.short)
            problems.messages[-1] += f"; or the path of a {self.base} class, e.g. {self.example}"
            return
        module, _, name = self.base.rpartition(".")
        try:
            found = load_class(self.name)
        except (ImportError, AttributeError, ValueError) as exc:
            problems.add(f"{problems.key('name')}={self.name!r} cannot be imported ({exc})")
            return
        if not issubclass(found, getattr(importlib.import_module(module), name)):
            problems.add(f"{problems.key('name')}={self.name!r} is not a {self.base}")

    @property
    def target(self) -> str | None:
        """The class path (None: a scheduler of ``none``)."""
        return self.short.get(self.name, self.name)

    def arguments(self) -> dict[str, Any]:
        """The settings as the checkpoint holds them: ``extra`` beside the others."""
        values = {k: v for k, v in vars(self).items() if k != "extra"}
        return {**values, **self.extra}


class OptimizerSettings(ClassSettings):
    """``model.optimizer``: ``name`` is the class (a short name or a class path), the others its
    keyword arguments where it takes them (``betas`` Adam's and AdamW's, ``momentum`` and
    ``nesterov`` SGD's, ``fused``: auto | true | false)."""

    prefix, section, short = "model.optimizer", "optimizer", OPTIMIZERS
    base, example = "torch.optim.Optimizer", "torch.optim.RAdam"

    def check(self, problems: Problems) -> None:
        super().check(problems)
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


class SchedulerSettings(ClassSettings):
    """``model.scheduler``: ``plateau`` (ReduceLROnPlateau on ``monitor``), ``cosine`` (to
    ``eta_min`` over the run's epochs), ``none``, or a class path; stepped once an epoch.
    ``mode``: min | max; null: max for AUROC metrics, min otherwise."""

    prefix, section, short = "model.scheduler", "scheduler", SCHEDULERS
    base, example = "torch.optim.lr_scheduler.LRScheduler", "torch.optim.lr_scheduler.StepLR"

    def check(self, problems: Problems) -> None:
        super().check(problems)
        problems.text("monitor", self.monitor)
        if self.mode is not None:
            problems.choice("mode", self.mode, MONITOR_MODES)
        problems.number("factor", self.factor, minimum=0, maximum=1, exclusive=True)
        problems.number("patience", self.patience, minimum=0, integer=True)
        problems.number("eta_min", self.eta_min, minimum=0)

    @property
    def monitor_mode(self) -> str:
        if self.mode is not None:
            return self.mode
        return "max" if "auroc" in self.monitor else "min"

    @property
    def steps_on_metric(self) -> bool:
        """It reads ``monitor`` each epoch (a ReduceLROnPlateau)."""
        if self.target is None:
            return False
        from torch.optim.lr_scheduler import ReduceLROnPlateau

        return issubclass(load_class(self.target), ReduceLROnPlateau)


@dataclass(frozen=True)
class ModelSettings:
    """Every argument of ``CheXNetModule``: the ``model.*`` settings and ``class_names``, the
    data's labels in output order (train passes the data module's ``pathologies``), and
    ``image_size``, the size of the images it is trained on."""

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
    image_size: int | None = None  # not a setting: the data's (train passes data.image_size)

    @property
    def classes(self) -> list[str]:
        return [str(name) for name in self.class_names]

    def hparams(self) -> dict[str, Any]:
        """Plain values for the checkpoint (``include_no_finding`` follows the classes; the
        optimizer's and scheduler's ``extra`` arguments stand beside their settings)."""
        values = {**asdict(self), "class_names": self.classes}
        for key in ("optimizer", "scheduler"):
            values[key] = getattr(self, key).arguments()
        return {**values, "include_no_finding": NO_FINDING in self.classes}


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
    problems.missing(values, [n for n in names if n not in ("class_names", "image_size")])
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
                values[key] = cls.from_config(values[key])
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
    problems.number("image_size", values.get("image_size"), minimum=1, integer=True, optional=True)
    if problems.text("compile_backend", values["compile_backend"]) and values["compile"] is True:
        _check_compile_backend(values["compile_backend"], problems)
    classes = values.get("class_names")
    if classes is not None and (isinstance(classes, str) or not all(classes)):
        problems.add(f"model.class_names={classes!r}: give a list of names")
    scheduler = values["scheduler"]
    if scheduler is not None and scheduler.steps_on_metric and classes:
        problems.choice("scheduler.monitor", scheduler.monitor, logged_metrics(classes))
    problems.raise_if_any()
    return ModelSettings(**values)


def _check_compile_backend(backend: str, problems: Problems) -> None:
    import torch

    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        problems.choice("compile_backend", backend, known)
