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


def open_model(cfg: DictConfig, checkpoint: Path):
    """The model to explain with (an ``Explainer``), its input size and its identity
    (``model_identity``), by ``backend``: the ONNX export of the checkpoint beside it when there
    is one that fits (``auto``, ``onnx``), else the PyTorch network (``auto``, ``torch``)."""
    from chexnet_pl.model_identity import of_checkpoint, of_parts
    from chexnet_pl.visualization.onnx_explainer import OnnxExplainer, export_command, find_export

    if cfg.backend != "torch":
        export, why_not = find_export(checkpoint)
        if export is not None and cfg.method not in ("auto", "cam"):
            export, why_not = None, f"method={cfg.method} needs PyTorch (the export has CAMs only)"
        if (
            export is not None
            and cfg.image_size
            and int(cfg.image_size) != int(export.card["image_size"])
        ):
            export, why_not = (
                None,
                f"{export.path.name} takes {export.card['image_size']} px, not image_size={cfg.image_size}",
            )
        if export is not None:
            explainer = OnnxExplainer(export)
            log.info("model: %s on ONNX Runtime (exported from this checkpoint)", export.path)
            identity = of_parts(
                export.card["backbone"], explainer.class_names, explainer.image_size, checkpoint
            )
            return explainer, explainer.image_size, identity
        if cfg.backend == "onnx":
            raise DataError(
                f"backend=onnx: {why_not}; export it with: {export_command(checkpoint)}"
            )
        log.info("model: %s on PyTorch (%s; for a start in seconds, once: %s)", checkpoint.name,
                 why_not, export_command(checkpoint))  # fmt: skip
    from chexnet_pl.checkpoints import load_run
    from chexnet_pl.models.contract import input_size
    from chexnet_pl.visualization.torch_explainer import TorchExplainer

    run = load_run(checkpoint)
    size = input_size(run.model, cfg.image_size)
    return TorchExplainer(run.model, cfg.method), size, of_checkpoint(run.model, checkpoint)


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

    from chexnet_pl.evaluation.thresholds import operating_thresholds
    from chexnet_pl.files import write_csv_atomic
    from chexnet_pl.visualization.explain import explain
    from chexnet_pl.visualization.inputs import (
        calibration_and_thresholds,
        image_files,
        read_readable,
    )

    settings = check_config(cfg)
    max_pixels = settings.max_pixels
    checkpoint = Path(cfg.ckpt).expanduser()
    out_dir = Path(cfg.out or cfg.paths.output_dir)
    paths = image_files(cfg.image, cfg.images)
    model, image_size, identity = open_model(cfg, checkpoint)
    log.info("model: %s", identity.line())
    operating = operating_thresholds(checkpoint, cfg.thresholds, model.class_names)
    calibration, thresholds = calibration_and_thresholds(
        cfg.get("calibration"), operating, model.class_names
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
                thresholds_note=operating.description,
                threshold_notes=operating.notes,
                model_line=identity.line(),
            )
        )
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
    table = pd.concat(frames, ignore_index=True)
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
