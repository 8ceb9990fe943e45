"""Train a chest X-ray classifier, then test its best checkpoint (per-class AUROC with CIs,
subgroups, calibration). Settings come from conf/train.yaml and the recipe in
conf/experiment/<name>.yaml; any of them can be changed on the command line.

  chexnet-train experiment=densenet121 data.root=/data/nih
  chexnet-train experiment=resnet data.root=/data/nih trainer=gpu data.batch_size=64
  chexnet-train -m hparams_search=lr_wd_grid experiment=densenet121 data.root=/data/nih
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
from omegaconf import DictConfig

from chexnet_pl.command_runner import CONFIG_PATH, run_command, user_errors_exit

log = logging.getLogger(__name__)


def check_config(cfg: DictConfig) -> None:
    """The pre-flight check (``chexnet_pl.settings``): every setting, before any work."""
    from chexnet_pl.settings import check_train_config

    check_train_config(cfg)


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """The command's run on a composed config: the check, then the library's run
    (``chexnet_pl.training.run.run_training``, which returns the metrics and the run's parts)."""
    from chexnet_pl.training.run import run_training

    check_config(cfg)  # every setting, before anything is built or read
    return run_training(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    with user_errors_exit():  # in a multirun, the sweep records the error and goes on
        metrics, _ = train(cfg)
    name = cfg.optimized_metric
    if name and name not in metrics:
        log.warning("optimized_metric %r was not logged; sweepers get None", name)
    return metrics.get(name) if name else None


def main() -> None:
    run_command("train", hydra_main, check=check_config, doc=__doc__)


if __name__ == "__main__":
    main()
