"""``chexnet_pl.train``: a training run from Python, composed by Hydra from the shipped configs
with the same checks as ``chexnet-train`` (mistyped keys with the closest ones named, every
setting judged before any work), and the same run folder."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

from chexnet_pl.errors import ConfigError

log = logging.getLogger(__name__)

MULTIRUN_FLAGS = ("-m", "--multirun")


def train(overrides: Sequence[str] = ()) -> Path:
    """Train (and, with ``test=true``, the default, evaluate the best checkpoint on the test split).

    Args:
        overrides: ``key=value`` settings as ``chexnet-train`` takes them, e.g.
            ``["experiment=densenet121", "data.root=/data/nih", "trainer.max_epochs=3"]``;
            ``hydra.run.dir=<folder>`` chooses the run folder (default:
            ``outputs/train/<date>/<time>``, relative to the working folder).

    Returns:
        The run folder: ``checkpoints/best.ckpt``, ``aucs.csv`` (with ``test=true``),
        ``config_resolved.yaml``, ``run_info.json``, ...

    Raises:
        ConfigError: a key that is not a setting (with the closest ones), or settings that
            cannot be used (all of them at once), before anything is read or trained.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    from chexnet_pl.config_location import CONFIG_MODULE
    from chexnet_pl.files import unwritable_reason
    from chexnet_pl.overrides import check_overrides

    if isinstance(overrides, str):
        raise ConfigError(
            f"overrides: give a list of key=value strings, not the string {overrides!r}"
        )
    overrides = [str(o) for o in overrides]
    if set(MULTIRUN_FLAGS) & set(overrides):
        raise ConfigError("chexnet_pl.train runs one job: sweeps (-m) are chexnet-train's")
    problems = check_overrides("train", overrides)
    if problems:
        raise ConfigError(*problems)
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    run_dir = Path(str(cfg.hydra.run.dir)).expanduser().absolute()
    reason = unwritable_reason(run_dir)
    if reason is not None:
        raise ConfigError(
            f"cannot write to the run folder {run_dir}: {reason}. Choose a writable one with "
            "hydra.run.dir=/path/to/folder"
        )
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.name = "train"
    HydraConfig.instance().set_config(cfg)  # ${hydra:runtime.output_dir} is the run folder
    task = copy.deepcopy(cfg)
    with read_write(task), open_dict(task):
        del task["hydra"]  # as Hydra gives a command its config
    from chexnet_pl.settings import check_train_config
    from chexnet_pl.training.run import run_training

    check_train_config(task)  # every setting, before anything is built or read
    run_training(task)
    log.info("run folder: %s", run_dir)
    return run_dir
