"""The command line checked before Hydra composes it: a key that is not a setting (``imag=``,
``data.image_sise=64``), a ``+`` on a key that exists, or a group option that does not exist
is one line naming the closest valid ones — never Hydra's struct error. ``--check`` composes
the config as the command would and runs its pre-flight check, without doing any work.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from chexnet_pl.config_location import CONFIG_MODULE, INSTALLED, SOURCE_CONFIG_DIR
from chexnet_pl.validation import closest, did_you_mean

# `python -m chexnet_pl.import_weights` has no Hydra config.
ARGPARSE_COMMANDS = ("import-weights",)
# Group options that were renamed: what to use instead (one line, never "not an option").
RENAMED = {
    ("experiment", "densenet"): (
        "experiment=densenet was renamed (it trained DenseNet-169, not the paper's DenseNet-121): "
        "use experiment=densenet169 or experiment=densenet201"
    ),
}


@contextmanager
def _hydra() -> Iterator[Any]:
    """Hydra initialised on the project's configs (the config loader), cleared afterwards."""
    from hydra import initialize_config_dir, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    if INSTALLED:
        context = initialize_config_module(CONFIG_MODULE, version_base="1.3")
    else:
        context = initialize_config_dir(str(SOURCE_CONFIG_DIR), version_base="1.3")
    try:
        with context:
            yield GlobalHydra.instance().config_loader()
    finally:
        GlobalHydra.instance().clear()


def _parse(args: Sequence[str]) -> tuple[list[Any], list[str]]:
    """(Hydra's parsed overrides, problems): flags such as ``-m`` and ``--cfg job`` set aside."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    known = get_args_parser().parse_args([a for a in args if a != "--check"])  # ours, not Hydra's
    try:
        return OverridesParser.create().parse_overrides(known.overrides), []
    except OverrideParseException as exc:
        return [], [f"cannot read the command line: {str(exc).splitlines()[0]}"]


def _is_group(loader: Any, key: str) -> bool:
    return "." not in key and loader.repository.group_exists(key)


def _choices(override: Any) -> list[Any]:
    """The values an override gives: one, or each of a choice/range sweep."""
    if not override.is_sweep_override():
        return [override.value()]
    try:
        return list(override.sweep_string_iterator())
    except Exception:  # an interval (Optuna) has no list of values
        return []


def _group_problems(loader: Any, override: Any) -> list[str]:
    group = override.key_or_group
    options = loader.get_group_options(group)
    problems = []
    for value in _choices(override):
        if value is None or str(value) == "null" or str(value) in options:
            continue
        if (group, str(value)) in RENAMED:
            problems.append(RENAMED[group, str(value)])
            continue
        near = closest(str(value), options)
        hint = f"did you mean {' or '.join(f'{group}={n}' for n in near)}? " if near else ""
        problems.append(
            f"{group}={value} is not an option of {group}; {hint}(options: {', '.join(options)})"
        )
    return problems


def _compose(loader: Any, config_name: str, overrides: list[str]) -> DictConfig:
    from hydra import compose

    return compose(config_name, overrides=overrides, return_hydra_config=True)


def _tree(cfg: Any) -> Any:
    """A config as plain values, interpolations and ``???`` as written (not resolved)."""
    return OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg


def _exists(cfg: Any, key: str) -> bool:
    node = _tree(cfg)
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def settings_of(cfg: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Every dotted key of ``cfg`` with its value as written (a section's: a mapping)."""
    found = []
    for key, value in _tree(cfg).items():
        found.append((f"{prefix}{key}", value))
        if isinstance(value, dict):
            found.extend(settings_of(value, f"{prefix}{key}."))
    return found


def all_keys(cfg: Any, prefix: str = "", sections: bool = True) -> list[str]:
    """Every dotted key of ``cfg`` (without the sections themselves unless ``sections``)."""
    return [key for key, value in settings_of(cfg, prefix)
            if sections or not isinstance(value, dict)]  # fmt: skip


def check_overrides(command: str, args: Sequence[str]) -> list[str]:
    """What is wrong with the keys of ``args`` for ``chexnet-<command>`` (empty: nothing)."""
    if command in ARGPARSE_COMMANDS:
        return []
    from hydra.core.object_type import ObjectType
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException

    overrides, problems = _parse(args)
    if problems:
        return problems
    if _all_in_own_file(command, overrides):
        return []  # every key is one the command's own YAML file sets: nothing to compose
    with _hydra() as loader:
        groups = [o for o in overrides if _is_group(loader, o.key_or_group)]
        for override in groups:
            problems += _group_problems(loader, override)
        if problems:
            return problems
        first = [_first_choice(o) for o in groups]
        try:
            cfg = _compose(loader, command.replace("-", "_"), first)
        except HydraException:
            return []  # Hydra will say what it is, in its words
        groups_names = sorted(set(loader.get_group_options("", ObjectType.GROUP)) - {"hydra"})
    keys = all_keys(cfg, sections=False)
    for override in overrides:
        key = override.key_or_group
        if override in groups:
            continue
        exists = _exists(cfg, key)  # a section (model.optimizer) exists too
        if override.type in (OverrideType.CHANGE, OverrideType.DEL) and not exists:
            candidates = keys if key.startswith("hydra.") else [
                k for k in keys if not k.startswith("hydra.")
            ] + groups_names  # fmt: skip
            hint = did_you_mean(key, candidates, "=")
            problems.append(
                f"{key} is not a setting of chexnet-{command}{hint or ''}"
                + ("" if hint else f" (see chexnet-{command} --help)")
                + (f"; +{key}=... adds a new key" if not hint and "." in key else "")
            )
        elif override.type is OverrideType.ADD and exists:
            problems.append(
                f"{key} is already a setting of chexnet-{command}: give "
                f"{override.input_line.removeprefix('+')} (no +)"
            )
    return problems


def _all_in_own_file(command: str, overrides: Sequence[Any]) -> bool:
    """Whether every override changes a key that the command's own YAML file (``conf/<command>.yaml``)
    sets and that names no config group: such keys are settings of the composed config, so the
    full composition (a fifth of a second of ``predict``'s start-up) is not needed to know it."""
    from hydra.core.override_parser.types import OverrideType

    from chexnet_pl.config_location import config_dir

    folder = config_dir()
    try:
        own = OmegaConf.load(folder / f"{command.replace('-', '_')}.yaml")
    except (OSError, ValueError):
        return False
    for override in overrides:
        first = override.key_or_group.split(".")[0]
        if (
            override.type is not OverrideType.CHANGE
            or first in ("hydra", "defaults")
            or (folder / first).is_dir()  # a config group
            or not _exists(own, override.key_or_group)
        ):
            return False
    return True


def _first_choice(override: Any) -> str:
    """A group override as Hydra reads it, with the first value of a sweep."""
    choices = _choices(override)
    value = choices[0] if choices else override.value()
    prefix = {"ADD": "+", "FORCE_ADD": "++"}.get(override.type.name, "")
    return f"{prefix}{override.key_or_group}={'null' if value is None else value}"


def composed_jobs(command: str, *command_lines: Sequence[str]) -> Iterator[DictConfig]:
    """The config of each job each command line describes (one, or each of a sweep's jobs),
    composed as Hydra's run would, with its run folder set; Hydra is initialised once."""
    from hydra.core.hydra_config import HydraConfig

    with _hydra() as loader:
        try:
            for args in command_lines:
                overrides, problems = _parse(args)
                if problems:
                    raise ValueError(problems[0])
                fixed = [o.input_line for o in overrides if not o.is_sweep_override()]
                sweeps = [[f"{o.key_or_group}={v}" for v in _choices(o)] for o in overrides
                          if o.is_sweep_override() and _choices(o)]  # fmt: skip
                for combination in itertools.product(*sweeps):
                    cfg = _compose(loader, command.replace("-", "_"), [*fixed, *combination])
                    with open_dict(cfg):
                        run_dir = OmegaConf.select(
                            cfg, "hydra.run.dir", throw_on_resolution_failure=False
                        )
                        cfg.hydra.runtime.output_dir = str(run_dir or "outputs/check")
                        cfg.hydra.job.num = 0
                    HydraConfig.instance().set_config(cfg)  # ${hydra:...} resolves as in a run
                    yield cfg
        finally:
            HydraConfig.instance().cfg = None


def check_settings(command: str, args: Sequence[str], check: Callable[[DictConfig], None]) -> str:
    """``--check``: every job's config through ``check``, the command's pre-flight check."""
    from hydra.errors import HydraException

    from chexnet_pl.errors import ConfigError

    count = 0
    try:
        for cfg in composed_jobs(command, args):
            check(cfg)
            count += 1
    except (
        HydraException
    ) as exc:  # what Hydra would refuse, in its words: one line, not a traceback
        raise ConfigError(" ".join(str(exc).split())) from exc
    return f"{count} job(s) checked" if count != 1 else "checked, nothing run"
