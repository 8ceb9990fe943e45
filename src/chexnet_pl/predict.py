"""Predict and explain X-rays (PNG, JPEG or DICOM) with a trained checkpoint: the
probability of each finding, a prediction table and heat-map overlays per image, and
predictions.csv for all of them.

  chexnet-predict ckpt=outputs/train/2026-12-01/09-30-00/checkpoints/best.ckpt image=xray.png
  chexnet-predict ckpt=best.ckpt images=xrays/ out=predictions/ top_k=2 method=gradcam
  chexnet-predict ckpt=best.ckpt images=xrays/ calibration=calibration.json thresholds=aucs.csv
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import hydra
from omegaconf import DictConfig

from chexnet_pl.cli import CONFIG_PATH, run_command, run_or_exit
from chexnet_pl.validation import Problems

log = logging.getLogger(__name__)

SKIPPED = "skipped.csv"  # images of images= that could not be read, with the reason


@dataclass(frozen=True)
class PredictSettings:
    """conf/predict.yaml, judged before the checkpoint or any image is read."""

    ckpt: str
    image: str | None
    images: str | None
    method: str
    top_k: int
    thresholds: str | None
    calibration: str | None
    image_size: int | None
    batch_size: int
    out: str | None

    def __post_init__(self) -> None:
        from chexnet_pl.visualization.heatmaps import METHODS

        problems = Problems()
        problems.path("ckpt", self.ckpt, optional=False)
        if (self.image is None) == (self.images is None):
            problems.add("give one of image=xray.png or images=folder/")
        problems.path("image", self.image)
        problems.path("images", self.images, "folder")
        problems.choice("method", self.method, METHODS)
        problems.number("top_k", self.top_k, minimum=1, integer=True)
        problems.path("thresholds", self.thresholds)
        problems.path("calibration", self.calibration)
        problems.number("image_size", self.image_size, minimum=1, integer=True, optional=True)
        problems.number("batch_size", self.batch_size, minimum=1, integer=True)
        problems.text("out", self.out, optional=True)
        problems.raise_if_any()


def check_config(cfg: DictConfig) -> PredictSettings:
    from chexnet_pl.settings import command_settings

    return command_settings(PredictSettings, cfg)


def predict(cfg: DictConfig) -> Path:
    """Write ``predictions.csv`` (Image Index, prob_<Class>...) and, per image, its prediction table
    and overlays of its ``top_k`` most probable findings; images that cannot be read are listed in
    ``skipped.csv`` (an error only when none can). Returns the output folder."""
    import pandas as pd

    from chexnet_pl.checkpoints import load_run
    from chexnet_pl.errors import DataError
    from chexnet_pl.visualization.explain import explain
    from chexnet_pl.visualization.inputs import (
        calibration_and_thresholds,
        image_files,
        read_readable,
    )

    check_config(cfg)
    out_dir = Path(cfg.out or cfg.paths.output_dir)
    run = load_run(cfg.ckpt)
    model = run.model
    image_size = int(cfg.image_size or run.image_size)
    paths = image_files(cfg.image, cfg.images)
    calibration, thresholds = calibration_and_thresholds(
        cfg.get("calibration"), cfg.thresholds, model.class_names
    )
    frames, skipped = [], []
    for start in range(0, len(paths), int(cfg.batch_size)):
        xrays, unreadable = read_readable(paths[start : start + int(cfg.batch_size)])
        skipped.extend(unreadable)
        if not xrays:
            continue
        frames.append(
            explain(
                model,
                xrays,
                image_size,
                out_dir,
                cfg.method,
                thresholds=thresholds,
                top_k=int(cfg.top_k),
                calibration=calibration,
            )
        )
    if skipped:
        out_dir.mkdir(parents=True, exist_ok=True)
        listing = pd.DataFrame(skipped, columns=["Image Index", "reason"])
        listing.to_csv(out_dir / SKIPPED, index=False)
        lines = "".join(f"\n  {name}: {reason}" for name, reason in skipped[:10])
        log.warning("%d of %d image(s) could not be read (all in %s):%s",
                    len(skipped), len(paths), out_dir / SKIPPED, lines)  # fmt: skip
    if not frames:
        raise DataError(
            f"none of the {len(paths)} image(s) could be read (each with its reason in "
            f"{out_dir / SKIPPED}), e.g. {skipped[0][0]}: {skipped[0][1]}"
        )
    table = pd.concat(frames, ignore_index=True)
    table.to_csv(out_dir / "predictions.csv", index=False)
    shown = table.head(10).set_index("Image Index").T.round(3).to_string()
    more = f"\n(first 10 of {len(table)}; all in predictions.csv)" if len(table) > 10 else ""
    log.info("%d image(s) → %s\n%s%s", len(table), out_dir, shown, more)
    return out_dir


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="predict")
def hydra_main(cfg: DictConfig) -> None:
    run_or_exit(predict, cfg)


def main() -> None:
    run_command("predict", hydra_main)


if __name__ == "__main__":
    main()
