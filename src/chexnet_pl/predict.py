"""Predict and explain X-rays with a trained checkpoint.

chexnet-predict ckpt=best.ckpt image=path/to/xray.png [method=gradcam] [out=folder]
chexnet-predict ckpt=best.ckpt images=folder/ [out=folder] [calibration=calibration.json]
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig

from chexnet_pl.checkpoints import load_run
from chexnet_pl.cli import CONFIG_PATH, run_or_exit
from chexnet_pl.data.image_limits import check_max_pixels
from chexnet_pl.errors import DataError
from chexnet_pl.visualization.explain import explain
from chexnet_pl.visualization.heatmaps import check_method
from chexnet_pl.visualization.inputs import calibration_and_thresholds, image_files, read_readable

log = logging.getLogger(__name__)

SKIPPED = "skipped.csv"  # images of images= that could not be read, with the reason


def predict(cfg: DictConfig) -> Path:
    """Write ``predictions.csv`` (Image Index, prob_<Class>...) and, per image, its prediction table
    and overlays of its ``top_k`` most probable findings; images that cannot be read are listed in
    ``skipped.csv`` (an error only when none can). Returns the output folder."""
    check_method(cfg.method)
    max_pixels = check_max_pixels(cfg.max_pixels)
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
        xrays, unreadable = read_readable(paths[start : start + int(cfg.batch_size)], max_pixels)
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
def main(cfg: DictConfig) -> None:
    run_or_exit(predict, cfg)


if __name__ == "__main__":
    main()
