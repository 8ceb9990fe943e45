"""Where the Hydra configs are: the repository's ``conf/`` folder, installed as the package
``chexnet_pl.conf`` (see setup.py), found the same way in an editable install and a wheel. A
source tree used without installing (PYTHONPATH=src, as on a bare GPU host) has it beside src/.

A module of its own, importing nothing of the project: the commands' shared code (``command_runner``), the
command-line check (``overrides``) and the shipped defaults (``config_defaults``) all read it.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path

CONFIG_MODULE = "chexnet_pl.conf"
SOURCE_CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"
INSTALLED = importlib.util.find_spec(CONFIG_MODULE) is not None
# What ``@hydra.main(config_path=...)`` takes.
CONFIG_PATH = f"pkg://{CONFIG_MODULE}" if INSTALLED else str(SOURCE_CONFIG_DIR)


def config_dir() -> Path:
    """The folder of the Hydra configs (for ``initialize_config_dir`` and reading a YAML file)."""
    if INSTALLED:
        return Path(str(importlib.resources.files(CONFIG_MODULE)))
    return SOURCE_CONFIG_DIR
