"""PadChest (Bustos et al., Medical Image Analysis 2020; BIMCV, Alicante): ``data=padchest``.

A download (BIMCV's PadChest) holds one table,
``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` (or ``.csv.gz``: 160,861 images of
67,625 patients), and the 16-bit PNGs named ``ImageID`` in 55 zip archives ``0.zip`` … ``54.zip``
(52 of them used; ``ImageDir`` says which). ``data.root`` may hold the PNGs unpacked into one
folder (``<root>/<ImageID>``) or in the archives' numbered folders (``<root>/<ImageDir>/<ImageID>``).

Labels: ``Labels`` is a Python-list string of the findings the report names (194 distinct names,
e.g. ``['pulmonary fibrosis', 'chronic changes', 'kyphosis']``), read with ``ast.literal_eval``
(never evaluated as code), each name trimmed and lower-cased. A finding not named is negative. The
release has 103 rows with no ``Labels`` and 777 whose list holds only empty names (``['']``): no
finding can be read for them, so they are left out, and how many is logged. ``MethodLabel`` says
who labelled a row: ``Physician`` (39,053 rows: a radiologist read the report) or ``RNN_model``
(a model trained on those); ``data.label_source=physician`` keeps the first only.

Label sets (``data.labels``):

- ``nih`` (default): NIH ChestX-ray14's 14 findings (and ``No Finding`` = the report says
  ``normal``), each the union of the PadChest names ``NIH_MAP`` gives it, under NIH's names, so
  an NIH model is scored on PadChest without a label map;
- ``all``: every PadChest name that at least ``data.min_label_count`` of the images used carry,
  most frequent first, under PadChest's own names;
- a list of PadChest names: those.

Views: ``Projection`` is PA, L (lateral), AP, AP_horizontal (supine AP), COSTAL (rib views),
EXCLUDE or UNK; ``data.projections`` keeps PA, AP and AP_horizontal by default.

Splits (``data.split.method``): patient (default; seeded, by ``PatientID``) or file.
Subgroup metadata: ``Patient Gender`` (``PatientSex_DICOM``: M, F; O and blank unknown),
``Patient Age`` (the study's year from ``StudyDate_DICOM`` − ``PatientBirth``), ``View Position``
(PA, or AP for AP and AP_horizontal), ``Manufacturer`` and ``Pediatric`` (pediatric for
``PED``, else adult): ``evaluation.subgroups=[sex,age,view,manufacturer,pediatric]``.
"""

from __future__ import annotations

import ast
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chexnet_pl.data.csv_table import read_csv_table
from chexnet_pl.data.datamodule import ChestXrayDataModule
from chexnet_pl.data.labelled_images import AGE, MANUFACTURER, PEDIATRIC, SEX, LabelledImages
from chexnet_pl.data.nih_table import FINDINGS, IMAGE, NO_FINDING, PATIENT, VIEW
from chexnet_pl.data.splits import split_table
from chexnet_pl.errors import DataError
from chexnet_pl.validation import Problems

log = logging.getLogger(__name__)

TABLE_NAME = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
IMAGE_ID, IMAGE_DIR, PATIENT_ID, PROJECTION = "ImageID", "ImageDir", "PatientID", "Projection"
LABELS, METHOD = "Labels", "MethodLabel"
REQUIRED_COLUMNS = (
    IMAGE_ID, IMAGE_DIR, PATIENT_ID, PROJECTION, LABELS, METHOD, "StudyDate_DICOM",
    "PatientBirth", "PatientSex_DICOM", "Manufacturer_DICOM", "Pediatric",
)  # fmt: skip
PROJECTIONS = ("PA", "L", "AP", "AP_horizontal", "COSTAL", "EXCLUDE", "UNK")
METHODS = {"Physician": "physician", "RNN_model": "model"}
LABEL_SOURCES = ("physician", "all")
SPLIT_METHODS = ("patient", "file")
# PadChest's finding names (as the table writes them, lower case) → NIH ChestX-ray14's finding
# they are by meaning; an NIH finding is positive when any of its names is in the report's list.
# Chosen from the 194 names of the real table: each finding's own name and its sub-types (the
# atelectases, the interstitial patterns, the loculated effusions, ...); not mapped: names that
# are only near a finding (``costophrenic angle blunting``, ``increased density``, ``fibrotic
# band``, ``subcutaneous emphysema``, ``mediastinal mass``, ``calcified pleural plaques``).
NIH_MAP: dict[str, tuple[str, ...]] = {
    "Atelectasis": ("atelectasis", "laminar atelectasis", "lobar atelectasis",
                    "segmental atelectasis", "atelectasis basal", "total atelectasis",
                    "round atelectasis"),
    "Cardiomegaly": ("cardiomegaly",),
    "Consolidation": ("consolidation", "air bronchogram"),
    "Edema": ("pulmonary edema",),
    "Effusion": ("pleural effusion", "loculated pleural effusion", "loculated fissural effusion"),
    "Emphysema": ("emphysema",),
    "Fibrosis": ("pulmonary fibrosis",),
    "Hernia": ("hiatal hernia",),
    "Infiltration": ("infiltrates", "interstitial pattern", "reticular interstitial pattern",
                     "reticulonodular interstitial pattern", "ground glass pattern",
                     "alveolar pattern"),
    "Mass": ("mass", "pulmonary mass"),
    "Nodule": ("nodule", "multiple nodules"),
    "Pleural_Thickening": ("pleural thickening", "apical pleural thickening",
                           "calcified pleural thickening"),
    "Pneumonia": ("pneumonia", "atypical pneumonia"),
    "Pneumothorax": ("pneumothorax", "hydropneumothorax"),
}  # fmt: skip
NORMAL = "normal"  # PadChest's "no finding": NIH's No Finding


def find_table(root: Path, given: str | None = None) -> Path:
    """The PadChest table: ``data.csv`` when given, else the release's CSV (or ``.csv.gz``) in
    ``root``."""
    if given:
        return Path(given).expanduser()
    for name in (TABLE_NAME, f"{TABLE_NAME}.gz"):
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"no {TABLE_NAME}(.gz) in {root}: point data.root at the PadChest folder (the table and "
        "the PNGs, or their numbered folders 0/ … 54/), or give data.csv=<the table>"
    )


def parse_label_list(text: Any, where: str) -> list[str] | None:
    """A ``Labels`` cell → its trimmed, lower-cased names (no empty ones), or None when it
    names none (blank, ``[]``, ``['']``). A value that is not a Python list of strings is an
    error naming ``where`` (file and line); it is read as a literal, never run."""
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(
            f"{where}: {LABELS} is {text[:80]!r}, not a list of finding names; the release "
            "writes e.g. \"['pleural effusion', 'cardiomegaly']\""
        )
    names = sorted({v.strip().lower() for v in value} - {""})
    return names or None


def _row(path: Path, table: pd.DataFrame, i: int) -> str:
    """Where row ``i`` is, for a message: its number among the data rows and its ImageID (the
    table's quoted fields span lines, so a line number would mislead)."""
    image = table[IMAGE_ID].iloc[i] if IMAGE_ID in table else ""
    return f"{path}, row {i + 1}" + (
        f" (ImageID {image})" if isinstance(image, str) and image else ""
    )


def read_padchest_table(path: str | Path) -> pd.DataFrame:
    """The PadChest table checked (columns, unique ImageID, a PatientID on every row, known
    Projection and MethodLabel values) with ``findings`` (each row's names, or None) added."""
    path = Path(path)
    table = read_csv_table(
        path, "PadChest table", REQUIRED_COLUMNS,
        f"PadChest's table ({TABLE_NAME}) has {list(REQUIRED_COLUMNS)} among its 36 columns.",
        dict.fromkeys(REQUIRED_COLUMNS, str),
    )  # fmt: skip
    for column in (IMAGE_ID, PATIENT_ID):
        table[column] = table[column].fillna("").str.strip()
        blank = np.flatnonzero((table[column] == "").to_numpy())
        if len(blank):
            raise DataError(f"{_row(path, table, int(blank[0]))}: empty {column}")
    duplicated = table[IMAGE_ID].duplicated(keep=False).to_numpy()
    if duplicated.any():
        first = table[IMAGE_ID][duplicated].iloc[0]
        rows = [int(i) + 1 for i in np.flatnonzero((table[IMAGE_ID] == first).to_numpy())]
        raise DataError(f"{path}: {IMAGE_ID} {first!r} is on more than one row (rows {rows})")
    for column, known in ((PROJECTION, PROJECTIONS), (METHOD, tuple(METHODS))):
        values = table[column].fillna("").str.strip()
        unknown = np.flatnonzero(~values.isin(known).to_numpy())
        if len(unknown):
            i = int(unknown[0])
            raise DataError(
                f"{_row(path, table, i)}: {column} is {table[column].iloc[i]!r}; the release "
                f"writes one of {list(known)}"
            )
        table[column] = values
    parsed: dict[str, list[str] | None] = {}
    findings = []
    for i, text in enumerate(table[LABELS].tolist()):
        key = text if isinstance(text, str) else ""
        if key not in parsed:
            parsed[key] = parse_label_list(text, _row(path, table, i))
        findings.append(parsed[key])
    table["findings"] = findings
    return table


def label_counts(findings: Sequence[list[str] | None]) -> pd.Series:
    """Per PadChest name, the number of images whose list names it, most frequent first."""
    names = pd.Series([n for names in findings if names for n in names], dtype=object)
    counts = names.value_counts()
    return counts.iloc[np.lexsort((counts.index.to_numpy(), -counts.to_numpy()))]


def label_matrix(findings: Sequence[list[str]], columns: Mapping[str, Sequence[str]]) -> np.ndarray:
    """0/1 float32 labels: column ``j`` (a label of ``columns``, with its PadChest names) is 1
    where the row's list names any of its names."""
    where = {name: j for j, names in enumerate(columns.values()) for name in names}
    labels = np.zeros((len(findings), len(columns)), dtype=np.float32)
    for i, names in enumerate(findings):
        for name in names:
            j = where.get(name)
            if j is not None:
                labels[i, j] = 1.0
    return labels


def image_paths(root: Path, table: pd.DataFrame) -> list[str | None]:
    """Each image's file: ``<root>/<ImageDir>/<ImageID>`` (the archives' folders) or
    ``<root>/<ImageID>`` (one folder); None where neither is on disk."""
    paths = []
    for name, folder in zip(table[IMAGE_ID], table[IMAGE_DIR].fillna("").str.strip(), strict=True):
        nested = os.path.join(root, folder, name)
        flat = os.path.join(root, name)
        paths.append(nested if os.path.isfile(nested) else flat if os.path.isfile(flat) else None)
    return paths


def subgroup_metadata(table: pd.DataFrame) -> pd.DataFrame:
    """Sex, age at the study, view, manufacturer and pediatric flag under NIH's column names."""
    sex = table["PatientSex_DICOM"].fillna("").str.strip().str.upper()
    year = pd.to_numeric(table["StudyDate_DICOM"].str.slice(0, 4), errors="coerce")
    age = year - pd.to_numeric(table["PatientBirth"], errors="coerce")
    return pd.DataFrame(
        {
            SEX: sex.where(sex.isin(["M", "F"]), "").to_numpy(),
            AGE: age.to_numpy(dtype=float),
            VIEW: table[PROJECTION]
            .map({"AP_horizontal": "AP"})
            .fillna(table[PROJECTION])
            .to_numpy(),
            PROJECTION: table[PROJECTION].to_numpy(),
            MANUFACTURER: table["Manufacturer_DICOM"].fillna("").str.strip().to_numpy(),
            PEDIATRIC: np.where(
                table["Pediatric"].fillna("").str.strip() == "PED", "pediatric", "adult"
            ),
        }
    )


class PadChestDataModule(ChestXrayDataModule):
    """PadChest: report-derived findings on a label set (NIH's by default), by projection and
    label source.

    Args:
        root: the folder with the table and the PNGs (flat, or in the numbered folders).
        csv: the table when not in ``root``.
        labels: nih | all | a list of PadChest names (see the module's doc).
        min_label_count: ``labels=all`` keeps the names at least this many images carry.
        include_no_finding: ``labels=nih``: add ``No Finding`` (the report says ``normal``).
        label_source: physician (the radiologist-labelled rows) | all.
        projections: the ``Projection`` values kept.
        split: ``method`` (patient | file), ``fractions``, ``file``, ``seed``.
        The other arguments are ``ChestXrayDataModule``'s.
    """

    def __init__(
        self,
        root: str,
        csv: str | None,
        labels: str | Sequence[str],
        min_label_count: int,
        include_no_finding: bool,
        label_source: str,
        projections: Sequence[str],
        split: Mapping[str, Any] | None,
        **settings: Any,
    ) -> None:
        super().__init__(root, **settings)
        self.csv = csv
        self.label_set = labels if isinstance(labels, str) else list(labels)
        self.min_label_count = int(min_label_count)
        self.include_no_finding = bool(include_no_finding)
        self.label_source = label_source
        self.projections = list(projections)
        self.split_args = dict(split or {})
        self._images: LabelledImages | None = None
        self._names: list[str] | None = self._nih_labels() if self.label_set == "nih" else None

    @property
    def pathologies(self) -> list[str]:  # type: ignore[override]
        """The label set's names: NIH's at once; ``all`` and a list once the table is read (the
        model is built with them, so asking reads the table)."""
        if self._names is None:
            self.read_labels()
        return list(self._names or [])

    def check_settings(self, settings: Mapping[str, Any], problems: Problems) -> None:
        labels = settings["labels"]
        if isinstance(labels, str):
            problems.choice("labels", labels, ("nih", "all"))
        elif not labels or not all(isinstance(n, str) and n.strip() for n in labels):
            problems.add(f"data.labels={labels!r}: give nih, all or a list of PadChest names")
        problems.number("min_label_count", settings["min_label_count"], minimum=1, integer=True)
        problems.flag("include_no_finding", settings["include_no_finding"])
        problems.choice("label_source", settings["label_source"], LABEL_SOURCES)
        projections = settings["projections"]
        if isinstance(projections, str) or not projections:
            problems.add(f"data.projections={projections!r}: give a list, e.g. [PA, AP]")
        else:
            for value in projections:
                problems.choice("projections[]", value, PROJECTIONS)
        problems.choice("split.method", dict(settings["split"] or {}).get("method", "patient"),
                        SPLIT_METHODS)  # fmt: skip

    def _nih_labels(self) -> list[str]:
        return [*FINDINGS, *([NO_FINDING] if self.include_no_finding else [])]

    def _label_columns(self, findings: Sequence[list[str]]) -> dict[str, tuple[str, ...]]:
        """Each label of the chosen set with the PadChest names that make it positive."""
        if self.label_set == "nih":
            columns = {name: NIH_MAP[name] for name in FINDINGS}
            return columns | ({NO_FINDING: (NORMAL,)} if self.include_no_finding else {})
        counts = label_counts(findings)
        if self.label_set == "all":
            names = [n for n, c in counts.items() if c >= self.min_label_count]
            if not names:
                raise DataError(
                    f"no PadChest label is on {self.min_label_count} of the {len(findings)} "
                    "images used; lower data.min_label_count"
                )
            log.info("PadChest: %d labels on at least %d images each", len(names),
                     self.min_label_count)  # fmt: skip
            return {name: (name,) for name in names}
        wanted = [n.strip().lower() for n in self.label_set]
        absent = [n for n in wanted if n not in counts.index]
        if absent:
            raise DataError(
                f"data.labels names {absent}, which no image used has; PadChest's names are "
                f"lower case, e.g. {list(counts.index[:5])}"
            )
        return {name: (name,) for name in wanted}

    def read_labels(self) -> LabelledImages:
        if self._images is None:
            self._images = self._read()
        return self._images

    def _read(self) -> LabelledImages:
        path = find_table(self.root, self.csv)
        table = read_padchest_table(path)
        log.info("read %d rows from %s", len(table), path)
        keep = table[PROJECTION].isin(self.projections).to_numpy()
        log.info("PadChest: projections %s keep %d of %d images", self.projections,
                 int(keep.sum()), len(table))  # fmt: skip
        if self.label_source == "physician":
            physician = (table[METHOD] == "Physician").to_numpy()
            log.info("PadChest: label_source=physician keeps %d of %d images",
                     int((keep & physician).sum()), int(keep.sum()))  # fmt: skip
            keep = keep & physician
        unlabelled = keep & table["findings"].isna().to_numpy()
        if unlabelled.any():
            log.warning(
                "PadChest: %d image(s) have an empty %s list (blank or ['']): no finding can be "
                "read for them, so they are left out (e.g. %s)",
                int(unlabelled.sum()), LABELS, _row(path, table, int(np.flatnonzero(unlabelled)[0])),
            )  # fmt: skip
        table = table[keep & ~unlabelled].reset_index(drop=True)
        if table.empty:
            raise DataError(
                f"{path}: no image is left after data.projections={self.projections} and "
                f"data.label_source={self.label_source}"
            )
        columns = self._label_columns(table["findings"].tolist())
        self._names = list(columns)
        labels = label_matrix(table["findings"].tolist(), columns)
        frame = pd.concat(
            [
                pd.DataFrame(
                    {IMAGE: table[IMAGE_ID].to_numpy(), PATIENT: table[PATIENT_ID].to_numpy()}
                ),
                subgroup_metadata(table),
            ],
            axis=1,
        )
        frame["split"] = split_table(frame, self.split_args)
        used = frame["split"].notna().to_numpy()
        frame, labels = frame[used].reset_index(drop=True), labels[used]
        frame["path"] = image_paths(self.root, table[used].reset_index(drop=True))
        return LabelledImages(frame, labels, str(path))
