"""The pre-flight check: every setting of a command judged before any work, all problems at once.

It judges nothing itself. It builds each component the command would build, as a dry run — the
data module (no image is read), the model's settings (no network, no weights), the trainer's
arguments, the callbacks, the loggers' arguments, the evaluation settings, or a command's own
settings dataclass — and collects what each constructor says, so it cannot disagree with them.
``chexnet-<command> --check`` runs it alone; every command runs it first.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf

from chexnet_pl.config_defaults import HYDRA_KEYS
from chexnet_pl.errors import ChexnetError, ConfigError, shown
from chexnet_pl.validation import Problems, did_you_mean, settings_from

T = TypeVar("T")

# What a missing mandatory value (``???``) is for, said when it is not given.
MANDATORY_HINTS = {
    "data.root": "the dataset's folder, e.g. data.root=/path/to/nih",
    "ckpt": "a checkpoint: ckpt=outputs/train/2026-12-01/09-30-00/checkpoints/best.ckpt",
    "root": "the data folder, e.g. root=/path/to/nih",
    "label": "a finding, e.g. label=Infiltration",
}
# Keys every command's config has besides its own settings.
COMMON_KEYS = ("paths", "hydra", "task_name")


def dry_run(problems: Problems, build: Callable[[], T], where: str = "") -> T | None:
    """``build()``, its ``ConfigError`` (or another constructor's error) added to ``problems``."""
    try:
        return build()
    except ConfigError as exc:
        problems.extend(exc)
    except (ChexnetError, TypeError, ValueError) as exc:
        problems.add(f"{where}: {exc}" if where else str(exc))
    except Exception as exc:  # a library's own configuration error (Lightning's Misconfiguration)
        if type(exc).__name__ != "MisconfigurationException":
            raise
        problems.add(f"{where}: {exc}" if where else str(exc))
    return None


def build_target(section: Mapping[str, Any], key: str, instantiate: bool = True) -> Any:
    """A ``_target_`` section built as Hydra would (or only its arguments checked): a key the
    class does not take is named with the closest ones it does, never a ``TypeError``."""
    from hydra.utils import get_object

    target = get_object(section["_target_"])
    arguments = {k: v for k, v in section.items() if k not in HYDRA_KEYS}
    parameters, open_ended = _parameters(target)
    problems = Problems(key)
    if not open_ended:
        problems.unknown_keys(arguments, list(parameters))
    for name, parameter in parameters.items():
        if parameter.default is inspect.Parameter.empty and name not in arguments:
            problems.add(f"{key}.{name} is not given")
    problems.raise_if_any()
    return target(**arguments) if instantiate else None


@functools.cache  # a class's signature does not change: read once per process
def _parameters(target: Any) -> tuple[dict[str, inspect.Parameter], bool]:
    """The keyword arguments ``target`` takes, and whether it takes any others: a class whose
    ``__init__`` passes ``**settings`` to its base takes the base's too (a dataset's data module)."""
    signatures = [inspect.signature(target)]
    if isinstance(target, type) and target.__module__.startswith("chexnet_pl."):
        signatures = [inspect.signature(c.__init__) for c in target.__mro__
                      if "__init__" in vars(c) and c.__module__.startswith("chexnet_pl.")]  # fmt: skip
    found: dict[str, inspect.Parameter] = {}
    for signature in signatures:
        named = {n: p for n, p in signature.parameters.items() if n != "self"
                 and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}  # fmt: skip
        for name, parameter in named.items():
            found.setdefault(name, parameter)
        if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
            return found, False  # this level takes no more: the list is complete
    return found, True


def check_mandatory(cfg: DictConfig | Mapping[str, Any]) -> None:
    """Every ``???`` given, and what the recipe lists under ``requires`` (``key: what it is``)."""
    plain = resolved(cfg, check=False) if isinstance(cfg, DictConfig) else cfg
    problems = Problems()
    for key in _missing(plain):
        hint = f" ({MANDATORY_HINTS[key]})" if key in MANDATORY_HINTS else ""
        problems.add(f"required setting not given: {key}{hint}")
    for key, what in (plain.get("requires") or {}).items():
        if _select(plain, key) in (None, ""):
            experiment = _experiment_name()
            by = f" by experiment={experiment}" if experiment else ""
            problems.add(f"{key} is required{by}: {what}")
    problems.raise_if_any()


def _missing(values: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose value is ``???`` (not given)."""
    if isinstance(values, Mapping):
        return [m for k, v in values.items() for m in _missing(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if values == "???" else []


def _select(values: Mapping[str, Any], key: str) -> Any:
    for part in key.split("."):
        if not isinstance(values, Mapping) or part not in values:
            return None
        values = values[part]
    return values


def _experiment_name() -> str | None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get("experiment")


def resolved(cfg: DictConfig, check: bool = True) -> dict[str, Any]:
    """The config as plain values, Hydra's own section aside; with ``check``, a ``???`` not
    given (or a ``requires`` entry) is a ``ConfigError`` naming it."""
    plain: dict[str, Any] = {}
    for key in cfg.keys():
        if key in ("hydra", "paths"):  # Hydra's own section and run folder: not settings
            continue
        node = cfg._get_node(key)
        if isinstance(node, DictConfig | ListConfig):
            plain[key] = OmegaConf.to_container(node, resolve=True, throw_on_missing=False)
        else:
            plain[key] = "???" if node._is_missing() else cfg[key]
    if check:
        check_mandatory(plain)
    return plain


def command_settings(cls: type[T], cfg: DictConfig | Mapping[str, Any]) -> T:
    """A command's own settings dataclass from its config (``paths``, ``hydra``, ``task_name``
    aside): an unknown key is named with the closest ones."""
    values = resolved(cfg) if isinstance(cfg, DictConfig) else cfg
    return settings_from(cls, {k: v for k, v in values.items() if k not in COMMON_KEYS}, "")


def check_train_config(cfg: DictConfig) -> None:
    """The whole ``train`` config: every component built as a dry run, before anything is
    trained or any image or weights file is read."""
    from chexnet_pl.device import detect_caps
    from chexnet_pl.evaluation.settings import EvaluationSettings
    from chexnet_pl.models.settings import logged_metrics, model_settings
    from chexnet_pl.training.trainer_settings import trainer_kwargs

    config = resolved(cfg)
    problems = Problems()
    data = dry_run(problems, lambda: build_target(config["data"], "data"), "data")
    # The outputs are the data's labels; when the data's settings are wrong (said above), the
    # model is judged with a stand-in list and no metric name is judged against the labels.
    classes = list(data.pathologies) if data is not None else None
    model_section = {**config["model"], "class_names": classes or ["(the data's labels)"]}
    model = dry_run(problems, lambda: model_settings(model_section), "model")
    dry_run(problems, lambda: trainer_kwargs(config["trainer"], detect_caps()), "trainer")
    monitors = logged_metrics(classes or [])
    for name, section in (config.get("callbacks") or {}).items():
        if not section:
            continue
        callback = dry_run(problems, lambda s=section, n=name: build_target(s, f"callbacks.{n}"),
                           f"callbacks.{name}")  # fmt: skip
        monitor = getattr(callback, "monitor", None)
        if monitor is not None and classes is not None and monitor not in monitors:
            problems.add(
                f"callbacks.{name}.monitor={shown(monitor)} is not logged; use one of: "
                + ", ".join(monitors)
                + did_you_mean(monitor, monitors).replace("; ", " (").replace("?", "?)")
            )
    visualization = (config.get("callbacks") or {}).get("visualization") or {}
    if model is not None and visualization.get("method") == "cam" and visualization.get("n_images"):
        dry_run(problems, lambda: _check_cam(model.backbone, len(model.classes)))
    for name, section in (config.get("logger") or {}).items():
        if section:
            dry_run(problems, lambda s=section, n=name: build_target(s, f"logger.{n}", False))
    dry_run(problems, lambda: EvaluationSettings.from_config(config.get("evaluation")))
    _check_start(config, problems)
    _check_sweep(cfg, problems)
    problems.raise_if_any()


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

    if HydraConfig.initialized():
        sweeper = HydraConfig.get().sweeper
    else:
        sweeper = OmegaConf.select(cfg, "hydra.sweeper") if "hydra" in cfg else None
    params = (sweeper or {}).get("params") or {}
    known = _keys(cfg)
    for key in params:
        if str(key) not in known:
            problems.add(
                f"hydra.sweeper.params: {key} is not a setting{did_you_mean(str(key), known)}"
            )


def _keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Every dotted key of ``cfg`` (Hydra's own section aside)."""
    keys = []
    for key in cfg.keys():
        if not prefix and key == "hydra":
            continue
        name = f"{prefix}{key}"
        keys.append(name)
        node = cfg._get_node(key)
        if isinstance(node, DictConfig):
            keys.extend(_keys(node, f"{name}."))
    return keys


def preflight(command: str, cfg: DictConfig) -> None:
    """The pre-flight check of ``chexnet-<command>`` (its module's ``check_config``)."""
    module = importlib.import_module(f"chexnet_pl.{command.replace('-', '_')}")
    module.check_config(cfg)
