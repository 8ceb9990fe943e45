"""Explore a finding: ``n`` images of a split that have it, each with overlay and prediction table.

chexnet-visualize ckpt=best.ckpt data.root=/data/nih label=Infiltration n=8 [split=test]
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from chexnet_pl.checkpoints import datamodule_for, load_run
from chexnet_pl.cli import CONFIG_PATH, run_or_exit
from chexnet_pl.data.image_limits import check_max_pixels
from chexnet_pl.data.images import read_gray
from chexnet_pl.errors import DataError
from chexnet_pl.visualization.explain import XRay, explain
from chexnet_pl.visualization.heatmaps import check_method
from chexnet_pl.visualization.inputs import calibration_and_thresholds

log = logging.getLogger(__name__)


def visualize(cfg: DictConfig) -> Path:
    check_method(cfg.method)
    max_pixels = check_max_pixels(cfg.max_pixels)
    run = load_run(cfg.ckpt)
    model = run.model
    if cfg.label not in model.class_names:
        raise DataError(
            f"label={cfg.label!r} is not an output of this model; choose one of {model.class_names}"
        )
    calibration, thresholds = calibration_and_thresholds(  # checked before any image is read
        cfg.get("calibration"), cfg.thresholds, model.class_names
    )
    datamodule = datamodule_for(run, cfg.data, cfg.paths.output_dir)
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
            read_gray(dataset.table["path"].iloc[i], max_pixels),
            dataset.labels[i],
        )
        for i in rows
    ]
    out_dir = Path(cfg.paths.output_dir)
    explain(
        model,
        xrays,
        int(cfg.image_size or run.image_size),
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


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="visualize")
def main(cfg: DictConfig) -> None:
    run_or_exit(visualize, cfg)


if __name__ == "__main__":
    main()
