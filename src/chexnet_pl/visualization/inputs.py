"""Loading what the visualisation commands need: image files and operating thresholds from an
evaluation's aucs.csv (the model: ``chexnet_pl.checkpoints.load_run``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from chexnet_pl.data.dicom import looks_like_dicom
from chexnet_pl.data.images import IMAGE_SUFFIXES, read_gray
from chexnet_pl.errors import DataError, ImageReadError
from chexnet_pl.evaluation.calibration import Calibration
from chexnet_pl.visualization.explain import XRay


def image_files(image: str | None, images: str | None) -> list[Path]:
    """``image=`` one file, or ``images=`` a folder's PNG, JPEG and DICOM files (sorted; DICOM by
    suffix or, for files named without one, by the 'DICM' marker). Which one is given, and that
    it exists, is ``predict.PredictSettings``' to judge."""
    if image:
        return [Path(image).expanduser()]
    folder = Path(images).expanduser()
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and (p.suffix.lower() in IMAGE_SUFFIXES or looks_like_dicom(p))
    )
    if not files:
        raise DataError(f"no .png/.jpg/.jpeg or DICOM files in {folder}")
    stems: dict[str, Path] = {}
    for path in files:  # outputs are named by stem: a.png and a.dcm would overwrite each other
        if path.stem in stems:
            raise DataError(
                f"{stems[path.stem].name} and {path.name} in {folder} would write the same "
                f"outputs ({path.stem}.csv, {path.stem}_<finding>.png); rename one"
            )
        stems[path.stem] = path
    return files


def read_xrays(paths: list[Path]) -> list[XRay]:
    return [XRay(p.name, read_gray(p)) for p in paths]


def read_readable(paths: list[Path]) -> tuple[list[XRay], list[tuple[str, str]]]:
    """The images that decode, and (file name, reason) for each that does not."""
    xrays, unreadable = [], []
    for path in paths:
        try:
            xrays.append(XRay(path.name, read_gray(path)))
        except ImageReadError as exc:
            unreadable.append((path.name, exc.reason))
    return xrays, unreadable


def thresholds_from(aucs_csv: str | Path | None, class_names: list[str]) -> list[float] | float:
    """Per-class operating thresholds from an evaluation's aucs.csv, or 0.5."""
    if not aucs_csv:
        return 0.5
    table = pd.read_csv(aucs_csv, index_col="class")
    if "threshold" not in table:
        raise DataError(
            f"{aucs_csv} has no 'threshold' column; give the aucs.csv an evaluation wrote"
        )
    missing = [c for c in class_names if c not in table.index]
    if missing:
        raise DataError(f"{aucs_csv} lacks classes {missing}")
    return [float(v) if pd.notna(v) else 0.5 for v in table.loc[class_names, "threshold"]]


def calibration_and_thresholds(
    calibration_file: str | None, aucs_csv: str | None, class_names: list[str]
) -> tuple[Calibration | None, list[float] | float]:
    """``calibration=`` and ``thresholds=`` together: an evaluation's thresholds were chosen on
    raw probabilities, so with a calibration they are mapped through it too (0.5 stays 0.5)."""
    thresholds = thresholds_from(aucs_csv, class_names)
    if not calibration_file:
        return None, thresholds
    calibration = Calibration.read(calibration_file)
    calibration.apply(np.zeros((1, len(class_names))), class_names)  # every class covered
    if aucs_csv:
        raw = np.asarray(thresholds, dtype=np.float64)[None, :]
        thresholds = [float(v) for v in calibration.apply(raw, class_names)[0]]
    return calibration, thresholds
