"""What every command shares: where the Hydra configs are, ``--help`` and ``--check``, mistyped
keys caught before Hydra composes, user errors ending in one line, and a run folder that cannot
be written stopping the command before Hydra writes into it.

The commands are the modules at the package's top level (``train``, ``evaluate``, ``predict``,
``visualize``, ``localize``, ``download``, ``prepare``, ``import_weights``, ``export``, ``serve``),
each a thin ``@hydra.main`` (or argparse) wrapper around a library function, importing that
library inside its functions (``--help`` imports no torch). Console scripts ``chexnet-<name>``
and ``python -m chexnet_pl.<name>`` call its ``main``, which is ``run_command``. Library code
lives in the subpackages.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

# Re-exported: every command reads CONFIG_PATH from here.
from chexnet_pl.config_location import CONFIG_MODULE as CONFIG_MODULE
from chexnet_pl.config_location import CONFIG_PATH as CONFIG_PATH
from chexnet_pl.config_location import config_dir as config_dir
from chexnet_pl.errors import ChexnetError
from chexnet_pl.files import DISK_FULL, unwritable_reason

log = logging.getLogger(__name__)
T = TypeVar("T")


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextmanager
def user_errors_exit() -> Iterator[None]:
    """A ChexnetError (bad input, said plainly), a missing ``???`` setting or a full disk is
    logged as one line and exits with status 2. In a Hydra multirun it propagates instead: the sweep records
    it in summary.csv and goes on with the other runs."""
    try:
        yield
    except (ChexnetError, InstantiationException, MissingMandatoryValue, OSError) as exc:
        message = _user_error(exc)
        if message is None or _in_multirun():
            raise
        log.error("%s", message)
        if not isinstance(exc, OSError) or isinstance(exc, ChexnetError):
            remove_unused_run_folder()
        raise SystemExit(2) from exc


def constructor_error(exc: BaseException) -> BaseException:
    """What a constructor raised under Hydra's ``InstantiationException`` (``exc`` otherwise)."""
    while isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _user_error(exc: BaseException) -> str | None:
    """The line that tells the user what is wrong, or None when ``exc`` is not a user error."""
    exc = constructor_error(exc)  # a component's constructor refused its settings
    if isinstance(exc, ChexnetError):
        return str(exc)
    if isinstance(exc, MissingMandatoryValue):  # a `???` setting the command line did not give
        return f"required setting not given: {exc.full_key}=... (add it to the command)"
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:  # a write not of ours (a logger's)
        where = Path(exc.filename).parent if exc.filename else None
        return "no space left on the disk{} ({}): free space there, or write to another folder".format(
            f" of {where} while writing {Path(exc.filename).name}" if where else "",
            exc.strerror or exc,
        )  # fmt: skip
    return None


def run_or_exit(task: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    """Run ``task(cfg)`` under ``user_errors_exit``."""
    with user_errors_exit():
        return task(cfg)


# What a run folder holds before the command has done any work: Hydra's config copies and log,
# and what ``train`` writes first (its resolved config and the machine it runs on).
BEFORE_ANY_WORK = frozenset({".hydra", "config_resolved.yaml", "run_info.json", "model.json"})
# The run folder Hydra is about to create for this (single) run, and the outermost of its
# folders that did not exist yet: what a run stopped before any work removes.
_new_run_folder: dict[str, Path] = {}


class OutputFolderCheck(Callback):
    """Registered in ``conf/hydra/default.yaml``. Hydra creates the run folder and opens its log
    file there before the command runs, and fails with its own traceback when it cannot; this
    checks the folder first and stops with one line instead. It also notes whether the folder
    is new, so that a run stopped by its settings or data before any work leaves none."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(config.hydra.run.dir)
        _new_run_folder.clear()
        if not folder.exists():  # noted before the check below creates it
            outermost = folder.absolute()
            while not outermost.parent.exists():
                outermost = outermost.parent
            _new_run_folder.update(folder=folder.absolute(), outermost=outermost)
        _stop_if_unwritable(folder, "hydra.run.dir")

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


def remove_unused_run_folder() -> None:
    """After a settings or data error: remove the run folder Hydra created for this run (and its
    new parent folders) when it holds nothing but what is written before any work, so that the
    newest folder under ``outputs/`` is always a real run. A folder that existed, or that holds
    anything else (a checkpoint, a table), is kept."""
    folder = _new_run_folder.get("folder")
    if folder is None or not folder.is_dir():
        return
    kept = [
        p.name for p in folder.iterdir() if p.name not in BEFORE_ANY_WORK and p.suffix != ".log"
    ]
    if kept:
        return
    shutil.rmtree(folder, ignore_errors=True)
    outermost = _new_run_folder["outermost"]
    parent = folder.parent
    while outermost in (parent, *parent.parents) and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
    _new_run_folder.clear()


def log_outputs(folder: str | Path, names: Sequence[str] = (), label: str = "outputs in") -> None:
    """The line every command ends with: its output folder and the key files it wrote there
    (those of ``names`` that exist; a pattern such as ``*.png`` is shown with its count)."""
    folder = Path(folder)
    present = []
    for name in names:
        if "*" in name:
            count = len(list(folder.glob(name)))
            present += [f"{count} {name}"] if count else []
        elif (folder / name).exists():
            present.append(name)
    log.info("%s %s%s", label, folder, f" ({', '.join(present)})" if present else "")


LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's own
# Hydra's command-line flags that end the run before the task (answered by Hydra itself).
HYDRA_ONLY_FLAGS = ("--hydra-help", "--info", "-i", "--shell-completion", "-sc", "--version")


def run_command(
    command: str,
    hydra_main: Callable[[], Any],
    argv: Sequence[str] | None = None,
    *,
    check: Callable[[DictConfig], None],
    doc: str | None,
):
    """``chexnet-<command>``: ``--help`` (``doc``, the command's docstring, and its YAML files)
    and ``--check`` (``check``, the command's pre-flight check, on every job) answered here, and
    a key that is not a setting stopped with the closest ones named; the rest is Hydra's ``main``.
    The command passes what it is: nothing here imports a command module."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        from chexnet_pl.command_help import command_help

        print(command_help(command, doc or "", config_dir(), command))
        raise SystemExit(0)
    if any(flag in args for flag in HYDRA_ONLY_FLAGS):
        return hydra_main()
    check_only = "--check" in args
    args = [a for a in args if a != "--check"]
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    if {"--cfg", "-c"} & set(args) and {"-m", "--multirun"} & set(args):
        log.error("--cfg shows one job's config: drop -m (--check checks every job of a sweep)")
        raise SystemExit(2)
    from chexnet_pl.overrides import check_overrides, check_settings

    problems = check_overrides(command, args)
    if not problems:  # the files and folders named, before torch is imported
        from chexnet_pl.early import early_problems

        problems = early_problems(command, args)
    if problems:
        for problem in problems:
            log.error("%s", problem)
        raise SystemExit(2)
    if check_only:
        with user_errors_exit():
            summary = check_settings(command, args, check)
        log.info("chexnet-%s: every setting can be used (%s)", command, summary)
        raise SystemExit(0)
    sys.argv = [sys.argv[0], *_log_in_out_folder(command, args)]
    return hydra_main()


# Commands whose ``out=`` is a folder: it is their run folder too (log and .hydra/ included).
OUT_FOLDER_COMMANDS = ("predict",)


def _log_in_out_folder(command: str, args: list[str]) -> list[str]:
    """``out=<folder>`` given to such a command, and no ``hydra.run.dir=``: the run writes its
    log there too, rather than under ``outputs/<command>/``."""
    if command not in OUT_FOLDER_COMMANDS or any(a.startswith("hydra.run.dir=") for a in args):
        return args
    given = [a.split("=", 1)[1] for a in args if a.startswith("out=")]
    if not given or given[-1] in ("", "null"):
        return args
    return [*args, f"hydra.run.dir={given[-1]}"]
