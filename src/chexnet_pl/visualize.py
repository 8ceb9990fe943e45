"""Explore a finding: ``n`` images of a split that have it, each with overlay and prediction table.

python -m chexnet_pl.visualize ckpt=best.ckpt data.root=/data/nih label=Infiltration n=8 [split=test]
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from chexnet_pl.cli import run_or_exit
from chexnet_pl.data.datamodule import NIHDataModule
from chexnet_pl.data.images import read_gray
from chexnet_pl.errors import ChexnetError, DataError
from chexnet_pl.train import CONFIG_DIR
from chexnet_pl.visualization.explain import XRay, explain
from chexnet_pl.visualization.heatmaps import METHODS
from chexnet_pl.visualization.inputs import calibration_and_thresholds, load_model

log = logging.getLogger(__name__)


def visualize(cfg: DictConfig) -> Path:
    if cfg.method not in METHODS:
        raise ChexnetError(f"method={cfg.method!r}; use one of {METHODS}")
    model, image_size, data_settings = load_model(cfg.ckpt)
    if cfg.label not in model.class_names:
        raise DataError(
            f"label={cfg.label!r} is not an output of this model; choose one of {model.class_names}"
        )
    settings = {**data_settings, "synthetic": None, "report_dir": str(cfg.paths.output_dir)}
    settings["include_no_finding"] = (
        model.hparams.include_no_finding
    )  # the model decides the classes
    settings.update({k: v for k, v in cfg.data.items() if v is not None})
    if "root" not in settings:
        raise DataError("give data.root=/path/to/nih (the checkpoint does not name one)")
    datamodule = NIHDataModule(**settings)
    datamodule.setup()
    dataset = datamodule.datasets[cfg.split]
    column = model.class_names.index(cfg.label)
    positives = np.flatnonzero(dataset.labels[:, column] > 0.5)
    if len(positives) == 0:
        raise DataError(f"no image of the {cfg.split} split has {cfg.label}")
    rows = np.random.default_rng(cfg.seed).permutation(positives)[: int(cfg.n)]
    xrays = [
        XRay(
            dataset.table["Image Index"].iloc[i],
            read_gray(dataset.table["path"].iloc[i]),
            dataset.labels[i],
        )
        for i in rows
    ]
    out_dir = Path(cfg.paths.output_dir)
    calibration, thresholds = calibration_and_thresholds(
        cfg.get("calibration"), cfg.thresholds, model.class_names
    )
    explain(
        model,
        xrays,
        int(cfg.image_size or image_size),
        out_dir,
        cfg.method,
        [cfg.label],
        thresholds,
        calibration=calibration,
    )
    log.info(
        "%d image(s) with %s (of %d in %s) → %s",
        len(xrays),
        cfg.label,
        len(positives),
        cfg.split,
        out_dir,
    )
    return out_dir


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="visualize")
def main(cfg: DictConfig) -> None:
    run_or_exit(visualize, cfg)


if __name__ == "__main__":
    main()
