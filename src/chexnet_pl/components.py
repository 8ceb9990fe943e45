"""The project's own components, by name: what a file from elsewhere may name.

A checkpoint stores its settings as plain values, and some of those values name code: the data
module that read its images (``_target_``), the optimizer and the scheduler (``name``). A file
handed over by someone else must not choose what runs on the machine that reads it, so every
setting a checkpoint (or a pooled dataset's member within it) stores is checked here *before*
anything it names is imported: a class path may only be one of the data modules the shipped
configs build (``conf/data/*.yaml``), and an optimizer or scheduler one of the short names or a
class of ``torch.optim`` / ``torch.optim.lr_scheduler``. Anything else (``subprocess.Popen``,
``os.system``, ``builtins.eval``, another package's class, a project function that is not a data
module) is refused by name, as are settings whose evaluation would run code: Lightning's
``_instantiator``, Hydra's ``_partial_``/``_args_``, and OmegaConf interpolations (``${...}``).

A user's own command line may still name a class path (``model.optimizer.name=mypkg.Opt``,
``+data._target_=mypkg.Data``): that is their choice, composed by Hydra, and never passes here.

``instantiate`` builds a component of a config the user composed (Hydra's, with a constructor's
own refusal raised as itself).

Ground floor: strings only; nothing here imports torch or what it checks.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from typing import Any

from chexnet_pl.errors import ChexnetError, WeightsError

# The short names of model.optimizer.name and model.scheduler.name (none: no schedule).
OPTIMIZERS = {"adam": "torch.optim.Adam", "adamw": "torch.optim.AdamW", "sgd": "torch.optim.SGD"}
SCHEDULERS = {
    "plateau": "torch.optim.lr_scheduler.ReduceLROnPlateau",
    "cosine": "torch.optim.lr_scheduler.CosineAnnealingLR",
    "none": None,
}
# Modules whose classes a stored optimizer or scheduler may name: part of torch, imported with it.
OPTIMIZER_MODULES = ("torch.optim",)
SCHEDULER_MODULES = ("torch.optim.lr_scheduler",)
# The data module of checkpoints that do not name theirs (written before datasets were data).
DEFAULT_DATAMODULE = "chexnet_pl.data.nih.NIHDataModule"
TARGET = "_target_"
# Keys that make Hydra or Lightning build or call something, beyond ``_target_``'s check
# (``_convert_`` and ``_recursive_`` only say how values are passed: a shipped data config's
# ``_convert_: all`` is stored with a pooled dataset's members).
CODE_KEYS = ("_instantiator", "_partial_", "_args_")
# The parts of a checkpoint that hold settings (the rest is tensors and training counters).
SETTINGS_PARTS = ("hyper_parameters", "datamodule_hyper_parameters")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@functools.cache
def data_modules() -> frozenset[str]:
    """The class paths of the data modules the shipped configs build (``conf/data``)."""
    from chexnet_pl.config_defaults import data_targets

    return frozenset({DEFAULT_DATAMODULE, *data_targets()})


def _class_in(path: str, modules: tuple[str, ...]) -> bool:
    """``path`` is ``<one of modules>.<ClassName>``."""
    module, _, name = path.rpartition(".")
    return module in modules and bool(IDENTIFIER.fullmatch(name)) and name[:1].isupper()


def _named_class_problem(where: str, value: Any, short: Mapping[str, Any], modules: tuple) -> str:
    """Why ``value`` is not an optimizer/scheduler a stored file may name ('' when it is)."""
    if value is None or (isinstance(value, str) and (value in short or value in short.values())):
        return ""
    if isinstance(value, str) and _class_in(value, modules):
        return ""
    allowed = ", ".join(sorted(k for k in short))
    return (
        f"{where}={value!r} is not one of chexnet_pl's components (the short names {allowed}, or "
        f"a class of {' / '.join(modules)})"
    )


def _walk(value: Any, where: str) -> Iterator[tuple[str, Any, Any]]:
    """(where, key, value) for every entry of nested mappings and lists."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            at = f"{where}.{key}" if where else str(key)
            yield at, key, item
            yield from _walk(item, at)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _walk(item, f"{where}[{i}]")


def foreign_names(settings: Mapping[str, Any], where: str = "") -> list[str]:
    """Every place in ``settings`` (a checkpoint's settings, as stored) that names code which is
    not one of the project's components, as ``key=value: why``; empty when there is none."""
    problems = []
    for at, key, value in _walk(settings, where):
        if key == TARGET:
            if not isinstance(value, str) or value not in data_modules():
                problems.append(
                    f"{at}={value!r} is not one of chexnet_pl's data modules "
                    f"({', '.join(sorted(data_modules()))})"
                )
        elif key in CODE_KEYS:
            problems.append(f"{at}={value!r}: a stored setting may not make Hydra or Lightning "
                            "build or call anything")  # fmt: skip
        elif isinstance(value, str) and "${" in value:
            problems.append(f"{at}={value!r}: a stored setting is a value, not an interpolation "
                            "(resolving it could read the environment or call a resolver)")  # fmt: skip
    for section, short, modules in (
        ("optimizer", OPTIMIZERS, OPTIMIZER_MODULES),
        ("scheduler", SCHEDULERS, SCHEDULER_MODULES),
    ):
        part = settings.get(section) if isinstance(settings, Mapping) else None
        if isinstance(part, Mapping) and "name" in part:
            at = f"{where}.{section}.name" if where else f"{section}.name"
            problem = _named_class_problem(at, part["name"], short, modules)
            if problem:
                problems.append(problem)
    return problems


def check_stored_settings(checkpoint: Mapping[str, Any], path: object) -> None:
    """Refuse a checkpoint whose settings name code that is not the project's own (``WeightsError``
    listing each place), before anything it names is imported."""
    problems = []
    for part in SETTINGS_PARTS:
        settings = checkpoint.get(part)
        if isinstance(settings, Mapping):
            problems += foreign_names(settings, part)
    if problems:
        lines = "".join(f"\n  - {p}" for p in problems)
        raise WeightsError(
            f"{path} names code that is not one of chexnet_pl's components, which is refused "
            f"(a file from elsewhere may only choose among the project's own datasets, backbones, "
            f"optimizers and schedulers; nothing it names was imported):{lines}\n"
            "If you trust this file and it was trained with your own class, give the data or "
            "the optimizer on your own command line instead (data=<dataset> data.root=..., "
            "model.optimizer.name=...)."
        )


def instantiate(config: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, except that a constructor's ``ChexnetError`` (a setting it
    refuses, said plainly) is raised as itself rather than inside Hydra's wrapper."""
    import hydra
    from hydra.errors import InstantiationException

    try:
        return hydra.utils.instantiate(config, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while isinstance(cause, InstantiationException):
            cause = cause.__cause__
        if isinstance(cause, ChexnetError):
            raise cause from exc
        raise
