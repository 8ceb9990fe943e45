"""RSNA Pneumonia Detection Challenge (RSNA, STR and Kaggle, 2018): ``data=rsna_pneumonia``.

NIH ChestX-ray14 images re-read by radiologists for lung opacities suggestive of pneumonia. A
download holds ``stage_2_train_labels.csv`` (the release ships it zipped: ``.csv.zip`` is read as
is, and so is ``.csv.gz``) and ``stage_2_train_images/<patientId>.dcm`` (26,684 DICOMs,
1024×1024). The table has one row per box: ``patientId, x, y, width, height, Target`` — ``Target``
1 with a box (x, y, width, height in the 1024-px image's pixels; an image with several boxes has
several rows), or 0 with no box on the image's one row.

- **Label**: one output, ``Lung Opacity`` (Target 1: "lung opacity suggestive of pneumonia"; the
  challenge's own word, and CheXpert's label of the same name). The boxes are kept as a table
  (``boxes``: ``Image Index, Finding Label, x, y, w, h``, NIH's box-list columns) for localisation.
- **Sex, age and view** come from each DICOM's header (read without its pixels), or from a table of
  the headers (``data.headers=``, e.g. ``kaggle_stage_2_train_images_dicom_headers.csv.gz``: one
  row per file with ``PatientID``, ``PatientSex``, ``PatientAge``, ``ViewPosition``).
- **Split**: the release has no official split of its labelled images. It is by ``patientId``,
  the only patient key the release has — but RSNA anonymised every image on its own, so a
  ``patientId`` is one image, and two images of one NIH patient may fall in different splits
  (RSNA published no mapping to NIH's patients in this release). ``data.split.method=file`` takes
  a split made with such a mapping.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chexnet_pl.data.csv_table import read_csv_table
from chexnet_pl.data.datamodule import ChestXrayDataModule
from chexnet_pl.data.dicom.releases import (
    check_split_method,
    header_table,
    labelled_release,
    read_headers,
)
from chexnet_pl.data.labelled_images import LabelledImages
from chexnet_pl.data.nih_table import IMAGE
from chexnet_pl.data.settings import VIEWS
from chexnet_pl.errors import DataError
from chexnet_pl.validation import Problems

log = logging.getLogger(__name__)

LABEL = "Lung Opacity"
ID, TARGET, BOX = "patientId", "Target", ("x", "y", "width", "height")
REQUIRED_COLUMNS = (ID, *BOX, TARGET)
TABLE_NAMES = ("stage_2_train_labels.csv", "stage_2_train_labels.csv.zip",
               "stage_2_train_labels.csv.gz", "kaggle_stage_2_train_labels.csv.zip")  # fmt: skip
IMAGE_SIZE = 1024  # the release's DICOMs: boxes are in these pixels
BOX_COLUMNS = (IMAGE, "Finding Label", "x", "y", "w", "h")


def find_labels_table(root: Path, given: str | None = None) -> Path:
    """``data.csv``, else the release's ``stage_2_train_labels.csv`` (or zipped) in ``root``."""
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise DataError(f"data.csv={path} is not a file")
        return path
    for name in TABLE_NAMES:
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"no stage_2_train_labels.csv (nor .csv.zip, .csv.gz) in {root}: point data.root at the "
        "RSNA download (the folder with it and stage_2_train_images/), or give data.csv="
    )


def _lines(mask: np.ndarray) -> list[int]:
    return [int(i) + 2 for i in np.flatnonzero(mask)[:5]]


def read_rsna_labels(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The labels table checked → (images: ``patientId`` and ``Target`` per image, in the table's
    order; boxes: ``Image Index, Finding Label, x, y, w, h`` per Target-1 row). Refused, naming the
    line and value: a Target other than 0/1, a Target-1 row without a whole box (or one outside
    the 1024-px image), a Target-0 row with a box, an image with Target 0 on more than one row or
    with both 0 and 1."""
    path = Path(path)
    try:
        table = read_csv_table(
            path, "RSNA labels table", REQUIRED_COLUMNS,
            f"RSNA's stage_2_train_labels.csv has {list(REQUIRED_COLUMNS)}.", {ID: str, TARGET: str},
        )  # fmt: skip
    except ValueError as exc:  # a zip holding several files, or none
        raise DataError(f"cannot read {path} as a CSV (is it damaged?): {exc}") from exc
    ids = table[ID].fillna("").str.strip()
    if (blank := (ids == "").to_numpy()).any():
        raise DataError(f"{path}: empty '{ID}' on line(s) {_lines(blank)}")
    target = pd.to_numeric(table[TARGET], errors="coerce")
    bad = ~target.isin([0, 1]).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}, line {i + 2}: Target is {table[TARGET].iloc[i]!r}; the release writes 1 "
            "(lung opacity, with a box) or 0 (none, no box)"
        )
    target = target.astype(np.int64)
    box = table[list(BOX)].apply(pd.to_numeric, errors="coerce")
    has_box = box.notna().any(axis=1).to_numpy()
    positive = (target == 1).to_numpy()
    if (wrong := ~positive & has_box).any():
        i = int(np.flatnonzero(wrong)[0])
        raise DataError(
            f"{path}, line {i + 2}: {ids.iloc[i]} has Target 0 and a box "
            f"({', '.join(f'{c}={table[c].iloc[i]}' for c in BOX)}); Target 0 means no "
            f"opacity: blank the box or set Target 1 ({int(wrong.sum())} such row(s))"
        )
    whole = box.notna().all(axis=1).to_numpy()
    inside = (
        (box["x"] >= 0) & (box["y"] >= 0) & (box["width"] > 0) & (box["height"] > 0)
        & (box["x"] + box["width"] <= IMAGE_SIZE) & (box["y"] + box["height"] <= IMAGE_SIZE)
    ).to_numpy()  # fmt: skip
    if (wrong := positive & ~(whole & inside)).any():
        i = int(np.flatnonzero(wrong)[0])
        values = ", ".join(f"{c}={table[c].iloc[i]}" for c in BOX)
        raise DataError(
            f"{path}, line {i + 2}: {ids.iloc[i]} has Target 1 and the box ({values}), not a box "
            f"of positive size within the {IMAGE_SIZE}×{IMAGE_SIZE} image ({int(wrong.sum())} "
            "such row(s)); every Target-1 row is one box"
        )
    per_image = pd.DataFrame({ID: ids, TARGET: target}).groupby(ID, sort=False)[TARGET]
    mixed = per_image.transform("nunique").to_numpy() > 1
    if mixed.any():
        name = ids[mixed].iloc[0]
        raise DataError(
            f"{path}: {name} has Target 0 and Target 1 (lines {_lines((ids == name).to_numpy())}); "
            "an image is positive (its rows are its boxes) or negative (one row)"
        )
    repeated = ~positive & ids.duplicated(keep=False).to_numpy()
    if repeated.any():
        name = ids[repeated].iloc[0]
        raise DataError(
            f"{path}: {name} has Target 0 on more than one row (lines "
            f"{_lines((ids == name).to_numpy())}); a negative image has one row"
        )
    images = pd.DataFrame({ID: ids, TARGET: target}).drop_duplicates(ID).reset_index(drop=True)
    boxes = pd.DataFrame(
        {
            IMAGE: ids[positive].to_numpy(),
            "Finding Label": LABEL,
            "x": box["x"][positive].to_numpy(),
            "y": box["y"][positive].to_numpy(),
            "w": box["width"][positive].to_numpy(),
            "h": box["height"][positive].to_numpy(),
        },
        columns=list(BOX_COLUMNS),
    )
    return images, boxes


class RSNAPneumoniaDataModule(ChestXrayDataModule):
    """RSNA Pneumonia Detection Challenge: one label (``Lung Opacity``) and its boxes (``boxes``).

    Args:
        root: the download folder (``stage_2_train_labels.csv[.zip]``, ``stage_2_train_images/``).
        csv: the labels table when not in ``root``.
        images: the DICOM folder, relative to ``root`` (or absolute).
        headers: a table of the DICOMs' headers for sex, age and view (default: read each file's).
        split: ``method`` (patient | file), ``fractions``, ``file``, ``seed``; by ``patientId``
            (one image each: see the module's note).
        view_position: frontal (all: RSNA has PA and AP only) | PA | AP | all.
        label_from_outputs: how a model with other outputs is scored here (external validation):
            ``{Lung Opacity: [outputs]}``, the label scored against the maximum of those outputs.
        The other arguments are ``ChestXrayDataModule``'s.
    """

    pathologies = [LABEL]

    def __init__(
        self,
        root: str,
        csv: str | None,
        images: str,
        headers: str | None,
        split: Mapping[str, Any] | None,
        view_position: str,
        label_from_outputs: Mapping[str, Sequence[str]] | None,
        **settings: Any,
    ) -> None:
        super().__init__(root, **settings)
        self.split_args = dict(split or {})
        check_split_method(self.split_args, "RSNA Pneumonia")
        self.csv, self.headers = csv, headers
        self.image_folder = Path(images).expanduser()
        self.view_position = view_position
        self.label_from_outputs = {k: list(v) for k, v in (label_from_outputs or {}).items()}
        self.boxes: pd.DataFrame | None = None

    def check_settings(self, settings: Mapping[str, Any], problems: Problems) -> None:
        problems.choice("view_position", settings["view_position"], VIEWS)

    def read_labels(self) -> LabelledImages:
        labels_path = find_labels_table(self.root, self.csv)
        images, boxes = read_rsna_labels(labels_path)
        log.info("%s: %d images (%d with lung opacity), %d boxes", labels_path.name, len(images),
                 int(images[TARGET].sum()), len(boxes))  # fmt: skip
        folder = (
            self.image_folder if self.image_folder.is_absolute() else self.root / self.image_folder
        )
        files = [os.path.join(folder, f"{name}.dcm") for name in images[ID]]
        paths = [f if os.path.isfile(f) else None for f in files]
        if self.headers:
            metadata = header_table(self.headers, "PatientID", images[ID])
        else:
            metadata = read_headers(paths)
        kept = labelled_release(
            images[ID].to_numpy(), images[ID].to_numpy(),  # a patient per image (module note)
            metadata, paths, images[TARGET].to_numpy(np.float32)[:, None], str(labels_path),
            self.split_args, self.view_position, "RSNA Pneumonia",
        )  # fmt: skip
        self.boxes = boxes[boxes[IMAGE].isin(set(kept.table[IMAGE]))].reset_index(drop=True)
        return kept
