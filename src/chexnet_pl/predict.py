"""Predict and explain X-rays (PNG, JPEG or DICOM) with a trained checkpoint: the
probability of each finding, a prediction table and heat-map overlays per image, and
predictions.csv for all of them.

  chexnet-predict ckpt=outputs/train/2026-12-01/09-30-00/checkpoints/best.ckpt image=xray.png
  chexnet-predict ckpt=best.ckpt images=xrays/ out=predictions/ top_k=2 method=gradcam
  chexnet-predict ckpt=best.ckpt images=xrays/ calibration=calibration.json thresholds=aucs.csv

The model runs on ONNX Runtime when ``chexnet-export ckpt=best.ckpt format=onnx cams=true`` has
written ``best.onnx`` of this very checkpoint beside it (``backend=auto``): PyTorch is then never
imported and the command answers in about four seconds on 2 cores; else on PyTorch.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

from chexnet_pl.command_runner import CONFIG_PATH, log_outputs, run_command, run_or_exit
from chexnet_pl.errors import DataError
from chexnet_pl.validation import Problems

if TYPE_CHECKING:  # imported when the command runs, not for --help
    import pandas as pd

log = logging.getLogger(__name__)

SKIPPED = "skipped.csv"  # images of images= that could not be read, with the reason
TABLES_SHOWN = 3  # images whose whole table is printed; beyond, one line per image
BACKENDS = ("auto", "torch", "onnx")


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
    conformal: str | None
    image_size: int | None
    batch_size: int
    out: str | None
    backend: str
    max_pixels: int | None  # conf/decode/default.yaml

    def __post_init__(self) -> None:
        from chexnet_pl.visualization.methods import METHODS

        problems = Problems()
        problems.path("ckpt", self.ckpt, optional=False)
        if (self.image is None) == (self.images is None):
            problems.add("give one of image=xray.png or images=folder/")
        if self.image is not None and Path(str(self.image)).expanduser().is_dir():
            problems.add(f"image={self.image} is a folder; use images={self.image}")
        else:
            problems.path("image", self.image)
        problems.path("images", self.images, "folder")
        problems.choice("method", self.method, METHODS)
        problems.number("top_k", self.top_k, minimum=1, integer=True)
        problems.path("thresholds", self.thresholds)
        problems.path("calibration", self.calibration)
        problems.path("conformal", self.conformal)
        problems.number("image_size", self.image_size, minimum=1, integer=True, optional=True)
        problems.number("batch_size", self.batch_size, minimum=1, integer=True)
        problems.text("out", self.out, optional=True)
        problems.choice("backend", self.backend, BACKENDS)
        problems.number("max_pixels", self.max_pixels, minimum=1, integer=True, optional=True)
        problems.raise_if_any()


def check_config(cfg: DictConfig) -> PredictSettings:
    from chexnet_pl.settings import command_settings

    return command_settings(PredictSettings, cfg)


def predict(cfg: DictConfig) -> Path:
    """Write ``predictions.csv`` (Image Index, prob_<Class>...) and, per image, its prediction table
    and overlays of its ``top_k`` most probable findings; images that cannot be read are listed in
    ``skipped.csv`` (an error only when none can). Returns the output folder."""
    import pandas as pd

    from chexnet_pl.evaluation.conformal import add_decisions, find_conformal, with_calibration
    from chexnet_pl.evaluation.thresholds import operating_thresholds
    from chexnet_pl.files import write_csv_atomic
    from chexnet_pl.ood import add_flags, for_explainer
    from chexnet_pl.visualization.explain import explain, model_input
    from chexnet_pl.visualization.inputs import (
        calibration_and_thresholds,
        image_files,
        read_readable,
    )
    from chexnet_pl.visualization.model_choice import open_explainer

    settings = check_config(cfg)
    max_pixels = settings.max_pixels
    checkpoint = Path(cfg.ckpt).expanduser()
    out_dir = Path(cfg.out or cfg.paths.output_dir)
    paths = image_files(cfg.image, cfg.images)
    model, image_size, identity = open_explainer(
        checkpoint, cfg.backend, cfg.method, cfg.image_size
    )
    log.info("model: %s", identity.line())
    operating = operating_thresholds(checkpoint, cfg.thresholds, model.class_names)
    calibration, thresholds = calibration_and_thresholds(
        cfg.get("calibration"), operating, model.class_names
    )
    conformal = with_calibration(
        find_conformal(checkpoint, cfg.get("conformal"), model.class_names), calibration,
        Path(str(cfg.get("calibration"))).name,
    )  # fmt: skip
    ood = for_explainer(model, checkpoint)  # None: no flag fitted (one info line says how)
    frames, skipped = [], []
    for start in range(0, len(paths), int(cfg.batch_size)):
        xrays, unreadable = read_readable(paths[start : start + int(cfg.batch_size)], max_pixels)
        skipped.extend(unreadable)
        if not xrays:
            continue
        frame = explain(
            model,
            xrays,
            image_size,
            out_dir,
            cfg.method,
            thresholds=thresholds,
            top_k=int(cfg.top_k),
            calibration=calibration,
            thresholds_note=operating.description,
            threshold_notes=operating.notes,
            model_line=identity.line(),
        )
        frames.append(add_flags(frame, ood, model, model_input(xrays, image_size), checkpoint))
    if skipped:
        out_dir.mkdir(parents=True, exist_ok=True)
        listing = pd.DataFrame(skipped, columns=["Image Index", "reason"])
        write_csv_atomic(listing, out_dir / SKIPPED, index=False)
        lines = "".join(f"\n  {name}: {reason}" for name, reason in skipped[:10])
        log.warning("%d of %d image(s) could not be read (all in %s):%s",
                    len(skipped), len(paths), out_dir / SKIPPED, lines)  # fmt: skip
    if not frames:
        raise DataError(
            f"none of the {len(paths)} image(s) could be read (each with its reason in "
            f"{out_dir / SKIPPED}), e.g. {skipped[0][0]}: {skipped[0][1]}"
        )
    table = add_decisions(pd.concat(frames, ignore_index=True), conformal)
    write_csv_atomic(table, out_dir / "predictions.csv", index=False)
    identity.write(out_dir)  # beside predictions.csv: which model made them
    log.info(
        "%d image(s) → %s; model: %s; thresholds: %s\n%s", len(table), out_dir, identity.line(),
        operating.description, summary(table, model.class_names, thresholds, operating.notes),
    )  # fmt: skip
    return out_dir


def summary(
    table: pd.DataFrame,
    class_names: list[str],
    thresholds: list[float],
    notes: tuple[str, ...] = (),
) -> str:
    """What is printed: each image's prediction table (finding, probability, threshold, above,
    and a note where the threshold is undefined or degenerate), as on the web page; beyond a few
    images, one line each with its findings above threshold, and those without a verdict."""
    from chexnet_pl.visualization.figures import prediction_table, table_text

    columns = [f"prob_{name}" for name in class_names]
    tables = [
        (name, prediction_table(row, class_names, thresholds=thresholds, notes=notes))
        for name, row in zip(table["Image Index"], table[columns].to_numpy(), strict=True)
    ]
    if len(tables) <= TABLES_SHOWN:
        return "\n".join(
            f"{name}\n{table_text(rows).to_string(index=False)}" for name, rows in tables
        )
    lines = []
    for name, rows in tables[:10]:
        above = rows[rows["above_threshold"].fillna(False).astype(bool)]
        found = ", ".join(
            f"{r.finding.replace('_', ' ')} {r.probability:.3f} (threshold {r.threshold:.3f})"
            for r in above.itertuples()
        )
        lines.append(f"{name}: {found or 'no finding above its threshold'}")
    undefined = [
        n.replace("_", " ") for n, t in zip(class_names, thresholds, strict=True) if math.isnan(t)
    ]
    if undefined:
        lines.append(f"no verdict (threshold undefined on validation): {', '.join(undefined)}")
    if len(tables) > 10:
        lines.append(
            f"(first 10 of {len(tables)}; every table in <image>.csv, all in predictions.csv)"
        )
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="predict")
def hydra_main(cfg: DictConfig) -> None:
    out_dir = run_or_exit(predict, cfg)
    log_outputs(out_dir, ["predictions.csv", "model.json", "*.png", SKIPPED, "predict.log"])


def main() -> None:
    run_command("predict", hydra_main, check=check_config, doc=__doc__)


if __name__ == "__main__":
    main()
