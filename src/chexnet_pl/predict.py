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

from dataclasses import dataclass
from pathlib import Path

import hydra
from omegaconf import DictConfig

from chexnet_pl.command_runner import CONFIG_PATH, log_outputs, run_command, run_or_exit
from chexnet_pl.validation import Problems

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
    ``skipped.csv`` (an error only when none can). Returns the output folder
    (``chexnet_pl.serving.predict_images``)."""
    from chexnet_pl.serving.predict_images import predict_images
    from chexnet_pl.visualization.inputs import image_files

    settings = check_config(cfg)
    out_dir = Path(settings.out or cfg.paths.output_dir)
    predict_images(
        settings.ckpt, image_files(settings.image, settings.images), out_dir,
        backend=settings.backend, method=settings.method, image_size=settings.image_size,
        thresholds=settings.thresholds, calibration=settings.calibration,
        conformal=settings.conformal, top_k=settings.top_k, batch_size=settings.batch_size,
        max_pixels=settings.max_pixels,
    )  # fmt: skip
    return out_dir


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="predict")
def hydra_main(cfg: DictConfig) -> None:
    from chexnet_pl.serving.predict_images import SKIPPED

    out_dir = run_or_exit(predict, cfg)
    log_outputs(out_dir, ["predictions.csv", "model.json", "*.png", SKIPPED, "predict.log"])


def main() -> None:
    run_command("predict", hydra_main, check=check_config, doc=__doc__)


if __name__ == "__main__":
    main()
