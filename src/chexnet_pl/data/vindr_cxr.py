"""VinDr-CXR (Nguyen et al., Scientific Data 2022), Kaggle's VinBigData release: ``data=vindr_cxr``.

Kaggle's "VinBigData Chest X-ray Abnormalities Detection" holds ``train.csv`` and
``train/<image_id>.dicom`` (15,000 DICOMs; ``data.root`` is the folder with both). ``train.csv``
has one row per (image, radiologist, finding box): ``image_id, class_name, class_id, rad_id,
x_min, y_min, x_max, y_max`` — 67,914 rows; each image read by 3 of 17 radiologists (``R1`` …
``R17``), who each marked boxes of 14 findings (class_id 0–13) or ``No finding`` (14, no box).

Image labels: a finding is positive when the readers' vote says so (``data.reader_vote``):
``any`` (at least one reader marked it) or ``majority`` (more than half of the image's readers).
``No finding`` is the image with no finding positive under that vote. The boxes are kept
(``VinDrCXRDataModule.boxes``: one row per box, with its reader) for localisation.

No patient id: the released table (and Kaggle's DICOMs, whose identifying tags were removed) has
none, so images are split as if each were its own patient (``split.method=image``). A patient
with several images could then be in two splits; the release does not let that be checked.

PhysioNet's VinDr-CXR layout (``annotations/image_labels_train.csv``) is not read here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chexnet_pl.data.csv_table import read_csv_table
from chexnet_pl.data.datamodule import ChestXrayDataModule
from chexnet_pl.data.labelled_images import LabelledImages
from chexnet_pl.data.nih_table import IMAGE, PATIENT
from chexnet_pl.data.splits import split_table
from chexnet_pl.errors import DataError
from chexnet_pl.validation import Problems

log = logging.getLogger(__name__)

IMAGE_ID, CLASS_NAME, CLASS_ID, RAD_ID = "image_id", "class_name", "class_id", "rad_id"
BOX = ("x_min", "y_min", "x_max", "y_max")
REQUIRED_COLUMNS = (IMAGE_ID, CLASS_NAME, CLASS_ID, RAD_ID, *BOX)
# The release's classes by class_id; 14 is "No finding".
CLASSES = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
    "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion",
    "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis",
)  # fmt: skip
NO_FINDING = "No finding"
VOTES = ("any", "majority")
SPLIT_METHODS = ("image", "file")
# NIH ChestX-ray14's outputs and the VinDr-CXR labels they are by meaning, for external
# validation (conf/evaluation/default.yaml's label_map carries these pairs). VinDr's Nodule/Mass
# is one label for NIH's two (not scored: a one-to-one map cannot take their maximum); Aortic
# enlargement, Calcification, ILD, Lung Opacity and Other lesion have no NIH output.
NIH_LABEL_MAP = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Consolidation": "Consolidation",
    "Effusion": "Pleural effusion",
    "Fibrosis": "Pulmonary fibrosis",
    "Infiltration": "Infiltration",
    "Pleural_Thickening": "Pleural thickening",
    "Pneumothorax": "Pneumothorax",
    "No Finding": "No finding",
}


def find_table(root: Path, given: str | None = None) -> Path:
    """``data.csv`` when given, else ``<root>/train.csv`` (or ``.csv.gz``)."""
    if given:
        return Path(given).expanduser()
    for name in ("train.csv", "train.csv.gz"):
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"no train.csv in {root}: point data.root at the VinBigData folder (train.csv and "
        "train/<image_id>.dicom), or give data.csv=<the table>"
    )


def read_vindr_table(path: str | Path) -> pd.DataFrame:
    """VinBigData's ``train.csv`` checked: columns, known classes with their ids, a reader on
    every row, a box on every finding row (x_min <= x_max, y_min <= y_max)."""
    path = Path(path)
    table = read_csv_table(
        path, "VinDr-CXR table", REQUIRED_COLUMNS,
        f"VinBigData's train.csv has {list(REQUIRED_COLUMNS)}.",
        {IMAGE_ID: str, CLASS_NAME: str, RAD_ID: str, CLASS_ID: str},
    )  # fmt: skip
    for column in (IMAGE_ID, RAD_ID, CLASS_NAME):
        table[column] = table[column].fillna("").str.strip()
        blank = np.flatnonzero((table[column] == "").to_numpy())
        if len(blank):
            raise DataError(f"{path}, line {int(blank[0]) + 2}: empty {column}")
    names = (*CLASSES, NO_FINDING)
    unknown = np.flatnonzero(~table[CLASS_NAME].isin(names).to_numpy())
    if len(unknown):
        i = int(unknown[0])
        raise DataError(
            f"{path}, line {i + 2}: class_name is {table[CLASS_NAME].iloc[i]!r}; the release "
            f"writes one of {list(names)}"
        )
    expected = table[CLASS_NAME].map({name: str(j) for j, name in enumerate(names)})
    wrong = np.flatnonzero((table[CLASS_ID].fillna("").str.strip() != expected).to_numpy())
    if len(wrong):
        i = int(wrong[0])
        raise DataError(
            f"{path}, line {i + 2}: class_id {table[CLASS_ID].iloc[i]!r} is not "
            f"{table[CLASS_NAME].iloc[i]!r}'s ({expected.iloc[i]}); use the release's table"
        )
    box = table[list(BOX)].apply(pd.to_numeric, errors="coerce")
    finding = (table[CLASS_NAME] != NO_FINDING).to_numpy()
    bad = finding & (
        box.isna().any(axis=1).to_numpy()
        | (box["x_min"] > box["x_max"]).to_numpy()
        | (box["y_min"] > box["y_max"]).to_numpy()
    )
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}, line {i + 2}: {table[CLASS_NAME].iloc[i]} has no usable box "
            f"({', '.join(f'{c}={table[c].iloc[i]!r}' for c in BOX)}); a finding needs x_min <= "
            "x_max and y_min <= y_max"
        )
    table[list(BOX)] = box
    return table


def image_labels(table: pd.DataFrame, vote: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Per image (in first-seen order): its readers (``readers``: how many) and the 0/1 labels
    of the 14 findings and No finding under ``vote`` (any | majority)."""
    images = pd.unique(table[IMAGE_ID])
    row = pd.Series(np.arange(len(images)), index=images)
    readers = table.groupby(IMAGE_ID, sort=False)[RAD_ID].nunique().reindex(images).to_numpy()
    marks = table[table[CLASS_NAME] != NO_FINDING].drop_duplicates([IMAGE_ID, RAD_ID, CLASS_NAME])
    votes = np.zeros((len(images), len(CLASSES)), dtype=np.int64)
    np.add.at(
        votes,
        (row[marks[IMAGE_ID]].to_numpy(), marks[CLASS_NAME].map(CLASSES.index).to_numpy()),
        1,
    )
    needed = np.ones(len(images)) if vote == "any" else readers // 2 + 1
    findings = (votes >= needed[:, None]).astype(np.float32)
    no_finding = (findings.sum(axis=1) == 0).astype(np.float32)[:, None]
    return pd.DataFrame({IMAGE_ID: images, "readers": readers}), np.hstack([findings, no_finding])


def boxes_of(table: pd.DataFrame) -> pd.DataFrame:
    """Every finding's box with its image, reader and class (No finding rows have none)."""
    found = table[table[CLASS_NAME] != NO_FINDING]
    return found[[IMAGE_ID, RAD_ID, CLASS_NAME, *BOX]].reset_index(drop=True)


def image_paths(root: Path, images: pd.Series) -> list[str | None]:
    """``<root>/train/<image_id>.dicom`` (or ``.dcm``) per image; None when not on disk."""
    paths = []
    for image in images:
        found = None
        for name in (f"train/{image}.dicom", f"train/{image}.dcm"):
            if os.path.isfile(candidate := os.path.join(root, name)):
                found = candidate
                break
        paths.append(found)
    return paths


class VinDrCXRDataModule(ChestXrayDataModule):
    """VinDr-CXR (Kaggle's VinBigData release): 14 findings and No finding by a readers' vote.

    Args:
        root: the folder with ``train.csv`` and ``train/``.
        csv: the table when not in ``root``.
        reader_vote: any | majority (of the image's 3 readers).
        split: ``method`` (image: seeded by image, as there is no patient id | file),
            ``fractions``, ``file``, ``seed``.
        The other arguments are ``ChestXrayDataModule``'s.
    """

    # How it spells NIH's findings (external validation adds these to evaluation.label_map).
    label_spellings = {k: v for k, v in NIH_LABEL_MAP.items() if k != v}

    pathologies = [*CLASSES, NO_FINDING]

    def __init__(
        self,
        root: str,
        csv: str | None,
        reader_vote: str,
        split: Mapping[str, Any] | None,
        **settings: Any,
    ) -> None:
        super().__init__(root, **settings)
        self.csv = csv
        self.reader_vote = reader_vote
        self.split_args = dict(split or {})
        self.boxes: pd.DataFrame | None = None

    def check_settings(self, settings: Mapping[str, Any], problems: Problems) -> None:
        problems.choice("reader_vote", settings["reader_vote"], VOTES)
        problems.choice("split.method", dict(settings["split"] or {}).get("method", "image"),
                        SPLIT_METHODS)  # fmt: skip

    def read_labels(self) -> LabelledImages:
        path = find_table(self.root, self.csv)
        table = read_vindr_table(path)
        images, labels = image_labels(table, self.reader_vote)
        log.info("read %d boxes and readings of %d images from %s (reader_vote=%s)", len(table),
                 len(images), path, self.reader_vote)  # fmt: skip
        self.boxes = boxes_of(table)
        frame = pd.DataFrame(
            {
                IMAGE: images[IMAGE_ID].to_numpy(),
                PATIENT: images[IMAGE_ID].to_numpy(),  # no patient id: each image its own
                "readers": images["readers"].to_numpy(),
            }
        )
        frame["split"] = split_table(frame, self.split_args, random_method="image")
        used = frame["split"].notna().to_numpy()
        frame, labels = frame[used].reset_index(drop=True), labels[used]
        frame["path"] = image_paths(self.root, frame[IMAGE])
        return LabelledImages(frame, labels, str(path))
