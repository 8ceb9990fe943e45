"""The shipped defaults, read from the YAML files of ``conf/`` (found here: ``config_dir``): the
one place they are written.

Commands get them from Hydra. Code that builds a component in Python (a checkpoint written
before a setting existed, a test, a benchmark) asks for them here instead of restating them.
"""

from __future__ import annotations

import functools
from typing import Any

from omegaconf import OmegaConf

from chexnet_pl.config_location import (  # noqa: F401  (where the configs are, re-exported)
    CONFIG_MODULE,
    CONFIG_PATH,
    INSTALLED,
    SOURCE_CONFIG_DIR,
    config_dir,
)

# Keys of a `_target_` section that are instructions to Hydra, not settings.
HYDRA_KEYS = ("_target_", "_convert_", "_partial_", "_recursive_", "_args_", "defaults")


@functools.cache
def _train_root() -> dict[str, Any]:
    """train.yaml's own values (seed, include_no_finding, test, ...) and its default options."""
    root = OmegaConf.to_container(OmegaConf.load(config_dir() / "train.yaml"))
    root.pop("hydra", None)
    return {"values": root, "options": chosen_options(root.pop("defaults"))}


def chosen_options(defaults: list[Any] | None) -> dict[str, Any]:
    """The ``group: option`` entries of a defaults list (``override /model: x`` → ``model``)."""
    return {group.removeprefix("override ").strip("/"): option for entry in defaults or []
            if isinstance(entry, dict) for group, option in entry.items()}  # fmt: skip


def default_option(group: str) -> str:
    """The option train.yaml picks for ``group`` (``data`` → ``nih``)."""
    return str(_train_root()["options"][group])


def shipped(section: str, option: str | None = None, **overrides: Any) -> dict[str, Any]:
    """``conf/<section>/<option>.yaml`` (default: train.yaml's option) as plain values,
    ``overrides`` merged in as a Hydra override would be (nested mappings merge key by key).
    Interpolations resolve against train.yaml's values; ``${paths.*}`` (Hydra's run folder) is
    None outside a run."""
    node = OmegaConf.create(group_values(section, option or default_option(section)))
    root = OmegaConf.create(
        {**_train_root()["values"], "paths": {"output_dir": None, "cache_dir": None}}
    )
    root[section] = node
    merged = OmegaConf.merge(root, {section: _plain(overrides)})
    values = OmegaConf.to_container(merged[section], resolve=True)
    return {k: v for k, v in values.items() if k not in HYDRA_KEYS}


@functools.cache
def group_values(group: str, option: str) -> dict[str, Any]:
    """``conf/<group>/<option>.yaml`` as written, over the options of its group that its own
    ``defaults`` names (``trainer/cpu.yaml`` over ``trainer/auto.yaml``); parsed once per
    process (callers copy it)."""
    values = OmegaConf.load(config_dir() / group / f"{option}.yaml")
    bases = [entry for entry in values.pop("defaults", None) or []
             if isinstance(entry, str) and entry != "_self_" and "@" not in entry]  # fmt: skip
    return OmegaConf.to_container(OmegaConf.merge(*(group_values(group, b) for b in bases), values))


def _plain(value: Any) -> Any:
    """Values OmegaConf can hold (paths as text, tuples as lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if hasattr(value, "__fspath__"):
        return str(value)
    return value


@functools.cache
def _data_configs() -> dict[str, str]:
    """``_target_`` → the ``conf/data`` option that configures it (``data=<option>``)."""
    found = {}
    for path in sorted((config_dir() / "data").glob("*.yaml")):
        target = OmegaConf.load(path).get("_target_")
        if target and target not in found:
            found[target] = path.stem
    return found


def data_targets() -> list[str]:
    """The class paths of the data modules the shipped configs build (``conf/data/*.yaml``)."""
    return list(_data_configs())


def shipped_data(target: str, **overrides: Any) -> dict[str, Any]:
    """The shipped settings of the data module ``target`` (its ``conf/data`` file), with
    ``overrides``; empty when no shipped config builds it."""
    option = _data_configs().get(target)
    if option is None:
        return dict(overrides)
    return shipped("data", option=option, **overrides)
