"""What every command-line entry point shares: user errors end in one logged line and exit 2,
and a run folder that cannot be written stops the command before Hydra writes into it."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from chexnet_pl.errors import ChexnetError

log = logging.getLogger(__name__)
T = TypeVar("T")


def run_or_exit(task: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    """Run ``task(cfg)``; a ChexnetError (bad input, said plainly) is logged, not a traceback."""
    try:
        return task(cfg)
    except ChexnetError as exc:
        log.error("%s", exc)
        raise SystemExit(2) from exc
    except MissingMandatoryValue as exc:  # a `???` setting the command line did not give
        log.error("required setting not given: %s=... (add it to the command)", exc.full_key)
        raise SystemExit(2) from exc


def unwritable_reason(folder: Path) -> str | None:
    """Why files cannot be created in ``folder`` (made if absent), or None when they can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_test_{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


class OutputFolderCheck(Callback):
    """Registered in ``conf/hydra/default.yaml``. Hydra creates the run folder and opens its log
    file there before the command runs, and fails with its own traceback when it cannot; this
    checks the folder first and stops with one line instead."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _stop_if_unwritable(Path(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _stop_if_unwritable(Path(config.hydra.sweep.dir), "hydra.sweep.dir")


def _stop_if_unwritable(folder: Path, key: str) -> None:
    reason = unwritable_reason(folder)
    if reason is not None:
        log.error(
            "cannot write to the run folder %s: %s. Choose a writable one with %s=/path/to/folder",
            folder, reason, key,
        )  # fmt: skip
        raise SystemExit(2)
