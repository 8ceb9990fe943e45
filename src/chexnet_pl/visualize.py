"""Explore a finding: n images of a split that have it, each with its heat-map overlay and
prediction table (the images, split and labels are those the checkpoint was trained on).

  chexnet-visualize ckpt=outputs/train/2026-12-01/09-30-00/checkpoints/best.ckpt label=Infiltration
  chexnet-visualize ckpt=best.ckpt data.root=/data/nih label=Effusion n=16 split=val method=gradcam
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig

from chexnet_pl.command_runner import CONFIG_PATH, log_outputs, run_command, run_or_exit
from chexnet_pl.validation import Problems

if TYPE_CHECKING:  # imported when the command runs, not for --help
    import pandas as pd

log = logging.getLogger(__name__)


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
    import numpy as np

    from chexnet_pl.checkpoints.runs import datamodule_for, load_run
    from chexnet_pl.data.images import read_gray
    from chexnet_pl.errors import DataError
    from chexnet_pl.evaluation.thresholds import operating_thresholds
    from chexnet_pl.label_sets import resolve_label
    from chexnet_pl.model_identity import of_checkpoint
    from chexnet_pl.models.input_contract import input_size
    from chexnet_pl.visualization.explain import XRay, explain
    from chexnet_pl.visualization.inputs import calibration_and_thresholds

    settings = check_config(cfg)
    max_pixels = settings.max_pixels
    run = load_run(cfg.ckpt)
    model = run.model
    label = resolve_label(str(cfg.label), model.class_names)
    if label is None:
        raise DataError(
            f"label={cfg.label!r} is not an output of this model; choose one of {model.class_names} "
            "(a space or an underscore: Pleural Thickening = Pleural_Thickening)"
        )
    operating = operating_thresholds(cfg.ckpt, cfg.thresholds, model.class_names)
    calibration, thresholds = calibration_and_thresholds(  # checked before any image is read
        cfg.get("calibration"), operating, model.class_names
    )
    datamodule = datamodule_for(run, cfg.data, cfg.paths.output_dir)
    datamodule.setup()
    dataset = datamodule.datasets[cfg.split]
    column = model.class_names.index(label)
    positives = np.flatnonzero(dataset.labels[:, column] > 0.5)
    if len(positives) == 0:
        raise DataError(f"no image of the {cfg.split} split has {label}")
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
    explained = explain(
        model, xrays, input_size(model, cfg.image_size), out_dir, cfg.method, [label],
        thresholds, calibration=calibration, thresholds_note=operating.description,
        threshold_notes=operating.notes, model_line=of_checkpoint(model, cfg.ckpt).line(),
    )  # fmt: skip
    log.info(
        "%d image(s) with %s (of %d in %s) → %s; thresholds: %s\n%s",
        len(xrays), label, len(positives), cfg.split, out_dir, operating.description,
        label_table(explained, model.class_names, label, thresholds, [x.name for x in xrays]),
    )  # fmt: skip
    return out_dir


def label_table(
    explained: pd.DataFrame,
    class_names: list[str],
    label: str,
    thresholds: list[float],
    names: list[str],
) -> str:
    """One row per image: its probability of ``label``, the threshold, above or not — every image
    has ``label``, so "no" is a miss at that threshold."""
    import pandas as pd

    j = class_names.index(label)
    probabilities = explained[f"prob_{label}"].to_numpy()
    table = pd.DataFrame({
        "image": names,
        f"p({label.replace('_', ' ')})": [f"{p:.3f}" for p in probabilities],
        "threshold": "undefined" if thresholds[j] != thresholds[j] else f"{thresholds[j]:.3f}",
        "above": [
            "undefined (no verdict)" if thresholds[j] != thresholds[j]
            else "yes" if p >= thresholds[j] else "no (missed)"
            for p in probabilities
        ],
    })  # fmt: skip
    return table.to_string(index=False)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="visualize")
def hydra_main(cfg: DictConfig) -> None:
    out_dir = run_or_exit(visualize, cfg)
    log_outputs(out_dir, ["*.png", "*.csv", "visualize.log"])


def main() -> None:
    run_command("visualize", hydra_main, check=check_config, doc=__doc__)


if __name__ == "__main__":
    main()
