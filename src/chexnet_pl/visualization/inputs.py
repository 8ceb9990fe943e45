"""Loading what the visualisation commands need: a checkpoint's model and image size, image files,
and operating thresholds from an evaluation's aucs.csv."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from chexnet_pl.data.images import IMAGE_SUFFIXES, read_gray
from chexnet_pl.errors import DataError, ImageReadError, WeightsError
from chexnet_pl.models.init_from import read_checkpoint
from chexnet_pl.models.module import CheXNetModule
from chexnet_pl.visualization.explain import XRay


def load_model(checkpoint: str | Path) -> tuple[CheXNetModule, int, dict]:
    """The model, the image size it was trained at (224 if the checkpoint does not say) and the
    data settings stored with it."""
    checkpoint = Path(checkpoint).expanduser()
    if not checkpoint.is_file():
        raise WeightsError(f"checkpoint not found: {checkpoint} (ckpt=)")
    data = read_checkpoint(checkpoint).get("datamodule_hyper_parameters") or {}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = CheXNetModule.load_from_checkpoint(checkpoint, map_location=device).eval()
    return model, int(data.get("image_size", 224)), data


def image_files(image: str | None, images: str | None) -> list[Path]:
    """``image=`` one file, or ``images=`` a folder's PNG/JPEG files (sorted)."""
    if bool(image) == bool(images):
        raise DataError("give exactly one of image=path/to/xray.png or images=path/to/folder")
    if image:
        path = Path(image).expanduser()
        if not path.exists():
            raise DataError(f"image not found: {path}")
        if path.is_dir():
            raise DataError(f"{path} is a folder; use images={path} for a folder")
        return [path]
    folder = Path(images).expanduser()
    if not folder.is_dir():
        raise DataError(f"images={folder} is not a folder")
    files = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    if not files:
        raise DataError(f"no .png/.jpg/.jpeg files in {folder}")
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
