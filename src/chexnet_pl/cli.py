"""What every command-line entry point shares: user errors end in one logged line and exit 2."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from omegaconf import DictConfig

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
