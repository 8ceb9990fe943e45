"""The pre-flight check: every setting of a command judged before any work, all problems at once.

It judges nothing itself. Hydra builds each component the run would build, from the same config
— the data module (no image is read), the callbacks — and the model's, trainer's, loggers' and
evaluation's settings are built as the run builds them (no network, no weights, no logger
started); what each constructor refuses is collected (``dry_run``), so it cannot disagree with
them. Each command passes its
``check_config`` to ``run_command``; ``chexnet-<command> --check`` runs it alone.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from chexnet_pl.errors import ChexnetError, ConfigError, shown
from chexnet_pl.validation import Problems, did_you_mean, settings_from

T = TypeVar("T")
# Keys every command's config has besides its own settings.
COMMON_KEYS = ("paths", "hydra", "task_name")
# Python's words for a keyword argument a constructor does not take.
_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")


def dry_run(
    problems: Problems, build: Callable[[], T], where: str = "", keys: list[str] | None = None
) -> T | None:
    """``build()``; what it refuses added to ``problems`` (a ``ConfigError``'s problems, or
    another constructor's error after ``where``). A keyword argument it does not take is named
    with the closest of ``keys`` (the section's settings), never a ``TypeError``."""
    from chexnet_pl.command_runner import constructor_error

    try:
        return build()
    except Exception as exc:  # noqa: BLE001 — judged just below
        error = constructor_error(exc)  # under Hydra's wrapper: what the constructor said
    if isinstance(error, ConfigError):
        problems.extend(error)
        return None
    unknown = _UNEXPECTED.search(str(error)) if isinstance(error, TypeError) else None
    if unknown and where:
        key = f"{where}.{unknown[1]}"
        known = [f"{where}.{k}" for k in keys or [] if not str(k).startswith("_")
                 and k != unknown[1]]  # fmt: skip
        problems.add(f"{key} is not a setting{did_you_mean(key, known)}")
    elif isinstance(error, ChexnetError | TypeError | ValueError) or (
        type(error).__name__ == "MisconfigurationException"  # Lightning's own refusal
    ):
        problems.add(f"{where}: {error}" if where else str(error))
    else:
        raise error
    return None


def check_mandatory(cfg: DictConfig) -> None:
    """Every ``???`` given, and what the recipe lists under
    ``requires`` (``key: what it is``): a recipe cannot make a key ``???`` once train.yaml gives
    it a value, as OmegaConf's merge keeps that value."""
    from chexnet_pl.overrides import settings_of

    problems = Problems()
    for key, value in settings_of(cfg):
        if value == "???" and key.split(".")[0] not in ("hydra", "paths"):
            problems.add(f"required setting not given: {key} (give {key}=...; see --help)")
    for key, what in (OmegaConf.select(cfg, "requires") or {}).items():
        if OmegaConf.select(cfg, str(key), default=None) in (None, ""):
            experiment = _experiment_name()
            by = f" by experiment={experiment}" if experiment else ""
            problems.add(f"{key} is required{by}: {what}")
    problems.raise_if_any()


def _experiment_name() -> str | None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get("experiment")


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain values, Hydra's section and the run folder aside; a ``???`` not
    given (or a ``requires`` entry) is a ``ConfigError`` naming it."""
    check_mandatory(cfg)
    plain: dict[str, Any] = {}
    for key in cfg:
        if key in ("hydra", "paths"):  # Hydra's own section and run folder: not settings
            continue
        if OmegaConf.is_missing(cfg, key):
            plain[key] = "???"
            continue
        value = cfg[key]
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True, throw_on_missing=False)
        plain[key] = value
    return plain


def command_settings(cls: type[T], cfg: DictConfig | Mapping[str, Any]) -> T:
    """A command's own settings dataclass from its config (``paths``, ``hydra``, ``task_name``
    aside): an unknown key is named with the closest ones."""
    values = resolved(cfg) if isinstance(cfg, DictConfig) else cfg
    return settings_from(cls, {k: v for k, v in values.items() if k not in COMMON_KEYS}, "")


def check_train_config(cfg: DictConfig) -> None:
    """The whole ``train`` config: every component built as a dry run, before anything is
    trained or any image or weights file is read."""
    from chexnet_pl.components import instantiate
    from chexnet_pl.device import detect_caps
    from chexnet_pl.evaluation.settings import EvaluationSettings
    from chexnet_pl.models.settings import logged_metrics, model_settings
    from chexnet_pl.ood import OodSettings
    from chexnet_pl.training.trainer_settings import trainer_kwargs

    config = resolved(cfg)
    problems = Problems()
    data = dry_run(problems, lambda: instantiate(cfg.data), "data", list(cfg.data))
    # The outputs are the data's labels; when the data's settings are wrong (said above), the
    # model is judged with a stand-in list and no metric name is judged against the labels.
    classes = list(data.pathologies) if data is not None else None
    model_section = {**config["model"], "class_names": classes or ["(the data's labels)"]}
    model = dry_run(problems, lambda: model_settings(model_section), "model")
    dry_run(problems, lambda: trainer_kwargs(config["trainer"], detect_caps()), "trainer")
    monitors = logged_metrics(classes or [])
    for name, section in (cfg.get("callbacks") or {}).items():
        if not section:
            continue
        where = f"callbacks.{name}"
        callback = dry_run(problems, lambda s=section: instantiate(s), where, list(section))
        monitor = getattr(callback, "monitor", None)
        if monitor is not None and classes is not None and monitor not in monitors:
            problems.add(
                f"{where}.monitor={shown(monitor)} is not logged; use one of: "
                + ", ".join(monitors)
                + did_you_mean(monitor, monitors).replace("; ", " (").replace("?", "?)")
            )
    visualization = (config.get("callbacks") or {}).get("visualization") or {}
    if model is not None and visualization.get("method") == "cam" and visualization.get("n_images"):
        dry_run(problems, lambda: _check_cam(model.backbone, len(model.classes)))
    for name, section in (config.get("logger") or {}).items():
        if section:  # its arguments only: a logger built here would start writing
            dry_run(problems, lambda s=section: _bind(s), f"logger.{name}", list(section))
    dry_run(problems, lambda: EvaluationSettings.from_config(config.get("evaluation")))
    dry_run(problems, lambda: OodSettings.from_config(config.get("ood")))
    _check_start(config, problems)
    _check_sweep(cfg, problems)
    problems.raise_if_any()


def _bind(section: Mapping[str, Any]) -> None:
    """The arguments of a ``_target_`` section bound to its class's signature, not called."""
    from hydra.utils import get_object

    arguments = {k: v for k, v in section.items() if not str(k).startswith("_")}
    inspect.signature(get_object(section["_target_"])).bind(**arguments)


def _check_cam(backbone: str, num_classes: int) -> None:
    """``method=cam`` needs a pooling + linear head: the network is built, without weights."""
    from chexnet_pl.models.backbones import create_backbone

    net = create_backbone(backbone, num_classes, False, None, None)
    if not net.cam_available:
        raise ConfigError(
            f"callbacks.visualization.method=cam: {backbone}'s head is {net.head_description}, "
            "so CAM does not apply; use method=gradcam (or auto)"
        )


def _check_start(config: Mapping[str, Any], problems: Problems) -> None:
    """``init_from`` (another run's weights) or ``ckpt_path`` (resume): one, and a file."""
    if config.get("init_from") and config.get("ckpt_path"):
        problems.add(
            "give init_from= (start from another run's weights) or ckpt_path= (resume a run), "
            "not both"
        )
    for key in ("init_from", "ckpt_path"):
        path = config.get(key)
        if path and not Path(str(path)).expanduser().is_file():
            problems.add(f"{key}={path} is not a file; give a checkpoint (.ckpt)")


def _check_sweep(cfg: DictConfig, problems: Problems) -> None:
    """A sweep's parameters (``hparams_search``) name settings that exist."""
    from hydra.core.hydra_config import HydraConfig

    from chexnet_pl.overrides import all_keys

    if HydraConfig.initialized():
        sweeper = HydraConfig.get().sweeper
    else:
        sweeper = OmegaConf.select(cfg, "hydra.sweeper") if "hydra" in cfg else None
    params = (sweeper or {}).get("params") or {}
    known = [key for key in all_keys(cfg) if key.split(".")[0] != "hydra"]
    for key in params:
        if str(key) not in known:
            problems.add(
                f"hydra.sweeper.params: {key} is not a setting{did_you_mean(str(key), known)}"
            )
