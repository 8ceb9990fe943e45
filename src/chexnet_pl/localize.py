"""Score heat maps against NIH's radiologist boxes (BBox_List_2017.csv), or with data=<dataset>
against VinDr-CXR's readers' boxes, RSNA Pneumonia's boxes or SIIM-ACR's masks: per finding and
reference, accuracy at IoU and IoBB thresholds, the pointing game beside its chance rate, the mask
hit rate and heat in mask, with patient-bootstrap intervals.

  chexnet-localize ckpt=outputs/train/2026-12-01/09-30-00/checkpoints/best.ckpt data.root=/data/nih
  chexnet-localize ckpt=best.ckpt data.root=/data/nih method=gradcam threshold=0.3
  chexnet-localize ckpt=best.ckpt data=siim_pneumothorax data.root=/data/siim
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig

from chexnet_pl.command_runner import CONFIG_PATH, log_outputs, run_command, run_or_exit
from chexnet_pl.validation import Problems

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class LocalizeSettings:
    """conf/localize.yaml, judged before the checkpoint or any image is read."""

    ckpt: str
    boxes: str | None
    method: str
    threshold: float
    image_size: int | None
    batch_size: int
    split: str
    label_map: Mapping[str, str] | None
    label_map_shared: bool
    bootstrap_samples: int
    bootstrap_seed: int
    confidence: float
    data: Mapping[str, Any]

    def __post_init__(self) -> None:
        from chexnet_pl.localization.releases import SPLITS
        from chexnet_pl.visualization.heatmaps import METHODS

        problems = Problems()
        problems.path("ckpt", self.ckpt, optional=False)
        problems.path("boxes", self.boxes)
        problems.choice("method", self.method, METHODS)
        problems.number("threshold", self.threshold, minimum=0, maximum=1)
        problems.number("image_size", self.image_size, minimum=1, integer=True, optional=True)
        problems.number("batch_size", self.batch_size, minimum=1, integer=True)
        problems.choice("split", self.split, SPLITS)
        problems.flag("label_map_shared", self.label_map_shared)
        problems.number("bootstrap_samples", self.bootstrap_samples, minimum=0, integer=True)
        problems.number("bootstrap_seed", self.bootstrap_seed, minimum=0, integer=True)
        problems.number("confidence", self.confidence, minimum=0, maximum=1)
        data = Problems("data")
        if self.data.get("_target_"):  # data=<dataset>: its module judges the rest
            if not self.data.get("root"):
                data.add("root: give data.root=/path/to/the/dataset (the release's folder)")
        else:
            data.unknown_keys(self.data, ("root",))
        data.path("root", self.data.get("root"), "folder")
        problems.messages += data.messages
        problems.raise_if_any()


def check_config(cfg: DictConfig) -> LocalizeSettings:
    from chexnet_pl.settings import command_settings

    return command_settings(LocalizeSettings, cfg)


def localize(cfg: DictConfig) -> pd.DataFrame:
    """Score the checkpoint's heat maps against the boxes or masks ``cfg`` names
    (``chexnet_pl.localization.scoring.localize_checkpoint``); returns the summary table."""
    from dataclasses import asdict

    from chexnet_pl.localization.scoring import localize_checkpoint

    settings = check_config(cfg)
    return localize_checkpoint(settings.ckpt, cfg.paths.output_dir, asdict(settings))


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="localize")
def hydra_main(cfg: DictConfig) -> None:
    run_or_exit(localize, cfg)
    log_outputs(cfg.paths.output_dir, ["localization.csv", "localization_boxes.csv"])


def main() -> None:
    run_command("localize", hydra_main, check=check_config, doc=__doc__)


if __name__ == "__main__":
    main()
