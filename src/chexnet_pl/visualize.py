"""Explore a finding: n images of a split that have it, each with its heat-map overlay and
prediction table (the images, split and labels are those the checkpoint was trained on).

  chexnet-visualize ckpt=outputs/train/2026-12-01/09-30-00/checkpoints/best.ckpt label=Infiltration
  chexnet-visualize ckpt=best.ckpt data.root=/data/nih label=Effusion n=16 split=val method=gradcam
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from chexnet_pl.command_runner import CONFIG_PATH, log_outputs, run_command, run_or_exit
from chexnet_pl.validation import Problems


@dataclass(frozen=True)
class VisualizeSettings:
    """conf/visualize.yaml, judged before the checkpoint or any image is read (``label`` is
    checked against the model's classes once it is loaded)."""

    ckpt: str
    label: str
    n: int
    split: str
    method: str
    seed: int
    thresholds: str | None
    calibration: str | None
    image_size: int | None
    data: Mapping[str, Any]
    max_pixels: int | None  # conf/decode/default.yaml

    def __post_init__(self) -> None:
        from chexnet_pl.data.splits import SPLITS
        from chexnet_pl.visualization.methods import METHODS

        problems = Problems()
        problems.path("ckpt", self.ckpt, optional=False)
        problems.text("label", self.label)
        problems.number("n", self.n, minimum=1, integer=True)
        problems.choice("split", self.split, SPLITS)
        problems.choice("method", self.method, METHODS)
        problems.number("seed", self.seed, integer=True)
        problems.path("thresholds", self.thresholds)
        problems.path("calibration", self.calibration)
        problems.number("image_size", self.image_size, minimum=1, integer=True, optional=True)
        problems.number("max_pixels", self.max_pixels, minimum=1, integer=True, optional=True)
        data = Problems("data")
        data.unknown_keys(self.data, ("root", "num_workers"))
        data.path("root", self.data.get("root"), "folder")
        workers = self.data.get("num_workers")
        if workers != "auto":
            data.number("num_workers", workers, minimum=0, integer=True)
        problems.messages += data.messages
        problems.raise_if_any()


def check_config(cfg: DictConfig) -> VisualizeSettings:
    from chexnet_pl.settings import command_settings

    return command_settings(VisualizeSettings, cfg)


def visualize(cfg: DictConfig) -> Path:
    """Explain ``n`` images of the split that have ``label`` into the run folder
    (``chexnet_pl.visualization.explore``); returns the folder."""
    from chexnet_pl.visualization.explore import explore_finding

    settings = check_config(cfg)
    out_dir = Path(cfg.paths.output_dir)
    explore_finding(
        cfg.ckpt, cfg.label, out_dir, n=int(cfg.n), split=cfg.split, method=cfg.method,
        seed=cfg.seed, thresholds=cfg.thresholds, calibration=cfg.get("calibration"),
        image_size=cfg.image_size, data=cfg.data, max_pixels=settings.max_pixels,
    )  # fmt: skip
    return out_dir


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="visualize")
def hydra_main(cfg: DictConfig) -> None:
    out_dir = run_or_exit(visualize, cfg)
    log_outputs(out_dir, ["*.png", "*.csv", "visualize.log"])


def main() -> None:
    run_command("visualize", hydra_main, check=check_config, doc=__doc__)


if __name__ == "__main__":
    main()
