"""Loading what the visualisation commands need: image files, and a calibration with the
operating thresholds (``evaluation.thresholds``; the model: ``chexnet_pl.checkpoints.runs.load_run``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chexnet_pl.data.dicom import looks_like_dicom
from chexnet_pl.data.images import IMAGE_SUFFIXES, read_gray
from chexnet_pl.errors import DataError, ImageReadError
from chexnet_pl.evaluation.calibration import Calibration
from chexnet_pl.evaluation.thresholds import OperatingThresholds
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


def read_xrays(paths: list[Path], max_pixels: int | None = None) -> list[XRay]:
    return [XRay(p.name, read_gray(p, max_pixels)) for p in paths]


def read_readable(
    paths: list[Path], max_pixels: int | None = None
) -> tuple[list[XRay], list[tuple[str, str]]]:
    """The images that decode, and (file name, reason) for each that does not (declaring more
    than ``max_pixels`` pixels is a reason, found before decoding)."""
    xrays, unreadable = [], []
    for path in paths:
        try:
            xrays.append(XRay(path.name, read_gray(path, max_pixels)))
        except ImageReadError as exc:
            unreadable.append((path.name, exc.reason))
    return xrays, unreadable


def calibration_and_thresholds(
    calibration_file: str | None, thresholds: OperatingThresholds, class_names: list[str]
) -> tuple[Calibration | None, list[float]]:
    """``calibration=`` with the run's operating thresholds: an evaluation's thresholds were chosen
    on raw probabilities, so with a calibration they are mapped through it too (the 0.5 of "no
    aucs.csv found" stays 0.5)."""
    values = list(thresholds.values)
    if not calibration_file:
        return None, values
    calibration = Calibration.read(calibration_file, class_names)  # checked: finite, every class
    if thresholds.source is not None:
        return calibration, calibrated_thresholds(calibration, values, class_names)
    return calibration, values


def calibrated_thresholds(
    calibration: Calibration, values: list[float], class_names: list[str]
) -> list[float]:
    """Thresholds chosen on raw probabilities, mapped through ``calibration``; an undefined one
    (NaN) stays undefined."""
    raw = np.asarray(values, dtype=np.float64)
    mapped = calibration.apply(np.nan_to_num(raw, nan=0.5)[None, :], class_names)[0]
    return [float("nan") if np.isnan(r) else float(m) for r, m in zip(raw, mapped, strict=True)]
