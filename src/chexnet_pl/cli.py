"""What every command shares: where the Hydra configs are, and user errors ending in one line.

The commands are the modules at the package's top level (``train``, ``evaluate``, ``predict``,
``visualize``, ``localize``, ``download``, ``prepare``, ``import_weights``), each a thin
``@hydra.main`` (or argparse) wrapper around a library function; console scripts ``chexnet-<name>``
point at their ``main``. Library code lives in the subpackages.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from omegaconf import DictConfig

from chexnet_pl.errors import ChexnetError

log = logging.getLogger(__name__)
T = TypeVar("T")

# The repository's conf/ folder, installed as the package ``chexnet_pl.conf`` (see setup.py): found
# the same way in an editable install and a wheel. A source tree used without installing
# (PYTHONPATH=src, as on a bare GPU host) has it beside src/.
CONFIG_MODULE = "chexnet_pl.conf"
SOURCE_CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"
_INSTALLED = importlib.util.find_spec(CONFIG_MODULE) is not None
CONFIG_PATH = f"pkg://{CONFIG_MODULE}" if _INSTALLED else str(SOURCE_CONFIG_DIR)


def config_dir() -> Path:
    """The folder of the Hydra configs (for ``initialize_config_dir`` and reading a YAML file)."""
    if _INSTALLED:
        return Path(str(importlib.resources.files(CONFIG_MODULE)))
    return SOURCE_CONFIG_DIR


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextmanager
def user_errors_exit() -> Iterator[None]:
    """A ChexnetError (bad input, said plainly) is logged as one line and exits with status 2.

    In a Hydra multirun it propagates instead: the sweep records it in summary.csv and goes on.
    """
    try:
        yield
    except ChexnetError as exc:
        if _in_multirun():
            raise
        log.error("%s", exc)
        raise SystemExit(2) from exc


def run_or_exit(task: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    """Run ``task(cfg)`` under ``user_errors_exit``."""
    with user_errors_exit():
        return task(cfg)
