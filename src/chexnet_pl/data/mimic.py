"""MIMIC-CXR-JPG v2 (Johnson et al., PhysioNet 2019): ``data=mimic_cxr``.

A download (``physionet.org/files/mimic-cxr-jpg/2.0.0/``, or 2.1.0) holds
``files/pNN/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg`` (377,110 images of 227,835 studies of 65,379
patients) and four tables, read here as PhysioNet documents them:

- ``mimic-cxr-2.0.0-metadata.csv.gz``: ``dicom_id, subject_id, study_id,
  PerformedProcedureStepDescription, ViewPosition, Rows, Columns, StudyDate, StudyTime,
  ProcedureCodeSequence_CodeMeaning, ViewCodeSequence_CodeMeaning,
  PatientOrientationCodeSequence_CodeMeaning`` — one row per image;
- ``mimic-cxr-2.0.0-chexpert.csv.gz`` / ``-negbio.csv.gz``: ``subject_id, study_id`` and the 14
  labels of the CheXpert labeller or of NegBio (1, 0, -1, blank) — one row per *study*, so every
  image of a study has its labels;
- ``mimic-cxr-2.0.0-split.csv.gz``: ``dicom_id, study_id, subject_id, split`` (train, validate,
  test) — the official split, by patient.

The release has no sex or age; MIMIC-IV's ``patients.csv.gz`` (``data.patients``) gives both
(age at the study: ``anchor_age`` plus the years from ``anchor_year`` to the shifted StudyDate).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chexnet_pl.data.chexpert_labeller import LabellerDataModule
from chexnet_pl.data.csv_table import read_csv_table
from chexnet_pl.data.labelled_images import (
    LabelledImages,
    collected_unmatched,
    filter_views,
    unmatched_rows,
)
from chexnet_pl.data.nih_table import IMAGE, PATIENT, VIEW
from chexnet_pl.data.settings import FRONTAL
from chexnet_pl.data.splits import assert_no_patient_leak, patient_split, split_from_file
from chexnet_pl.data.table_paths import files_in_folder
from chexnet_pl.data.uncertainty import (
    CHEXPERT_LABELS,
    labeller_values,
)
from chexnet_pl.errors import DataError

log = logging.getLogger(__name__)

LABELLERS = ("chexpert", "negbio")
TABLE = "mimic-cxr-2.0.0-{}.csv.gz"
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate")
SPLIT_NAMES = {"train": "train", "validate": "val", "test": "test"}
FRONTAL_VIEWS = ("PA", "AP")


def find_table(root: Path, kind: str, given: str | None = None) -> Path:
    """``root/mimic-cxr-2.0.0-<kind>.csv.gz`` (or ``.csv``), or the file given."""
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise DataError(f"data.{kind}_csv={path} is not a file")
        return path
    for name in (TABLE.format(kind), TABLE.format(kind).removesuffix(".gz")):
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"no {TABLE.format(kind)} in {root}: point data.root at the MIMIC-CXR-JPG folder (the one "
        f"with files/ and the mimic-cxr-2.0.0-*.csv.gz tables), or give data.{kind}_csv="
    )


def read_table(path: Path, required: tuple[str, ...], key: str | tuple[str, ...]) -> pd.DataFrame:
    """A MIMIC table with its ``required`` columns, ids as integers, and ``key`` unique."""
    table = read_csv_table(
        path,
        "MIMIC-CXR table",
        required,
        f"PhysioNet's table has {list(required)} among its columns.",
        {"dicom_id": str, "ViewPosition": str, "split": str},
    )
    for column in ("subject_id", "study_id"):
        if column in required:
            ids = pd.to_numeric(table[column], errors="coerce")
            bad = np.flatnonzero((ids.isna() | (ids != ids.round())).to_numpy())
            if len(bad):
                i = int(bad[0])
                raise DataError(
                    f"{path}, line {i + 2}: {column} is {table[column].iloc[i]!r}, not a number"
                )
            table[column] = ids.astype(np.int64)
    keys = list(key) if isinstance(key, tuple) else [key]
    duplicated = table.duplicated(keys, keep=False).to_numpy()
    if duplicated.any():
        lines = [int(i) + 2 for i in np.flatnonzero(duplicated)[:2]]
        raise DataError(f"{path}: {'/'.join(keys)} repeats on lines {lines}; remove the duplicate")
    return table


def image_paths(
    root: Path,
    table: pd.DataFrame,
    source: str | Path | None = None,
    lines: dict[str, int] | None = None,
) -> list[str | None]:
    """``files/pNN/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg`` under ``root`` per row of a table with
    ``Image Index`` (the dicom_id), ``Patient ID`` and ``study_id`` (None: not on disk). A
    dicom_id leading outside ``root/files`` (``../``, a link out) stops, naming ``source`` (the
    metadata table) and its line (``lines``: dicom_id → line)."""
    relative = [
        f"p{str(subject)[:2]}/p{subject}/s{study}/{dicom}.jpg"
        for dicom, subject, study in zip(
            table[IMAGE], table[PATIENT], table["study_id"], strict=True
        )
    ]
    lines = lines or {}
    return files_in_folder(
        Path(root) / "files",
        relative,
        source or Path(root) / TABLE.format("metadata"),
        "dicom_id",
        [lines.get(dicom, 0) for dicom in table[IMAGE]],
        table[IMAGE].tolist(),
    )


def patient_metadata(path: str | Path, studies: pd.DataFrame) -> pd.DataFrame:
    """Sex and age at each image's study from MIMIC-IV's ``patients.csv.gz``."""
    patients = read_table(Path(path), ("subject_id", "gender", "anchor_age", "anchor_year"),
                          "subject_id")  # fmt: skip
    merged = studies[["subject_id", "StudyDate"]].merge(patients, on="subject_id", how="left")
    year = pd.to_numeric(merged["StudyDate"], errors="coerce") // 10000
    age = merged["anchor_age"] + (year - merged["anchor_year"])
    return pd.DataFrame(
        {"Patient Gender": merged["gender"].fillna("").to_numpy(), "Patient Age": age.to_numpy()}
    )


class MimicCxrDataModule(LabellerDataModule):
    """MIMIC-CXR-JPG v2: the 14 labels of the chosen labeller with an uncertainty policy.

    Args:
        root: the folder with ``files/`` and the ``mimic-cxr-2.0.0-*.csv.gz`` tables.
        labeller: chexpert (``-chexpert.csv.gz``) or negbio (``-negbio.csv.gz``).
        metadata_csv / labels_csv / split_csv: the tables when not in ``root``.
        patients: MIMIC-IV's ``patients.csv.gz``, for sex and age subgroups (optional).
        split: ``method`` (official: the split table; patient; file), ``fractions``, ``file``,
            ``seed``.
        view_position: frontal (ViewPosition PA or AP; default) | lateral | all | PA | AP.
        The other arguments are ``LabellerDataModule``'s (labels, uncertainty) and
        ``ChestXrayDataModule``'s.
    """

    def __init__(
        self,
        root: str,
        labeller: str,
        metadata_csv: str | None,
        labels_csv: str | None,
        split_csv: str | None,
        patients: str | None,
        **settings: Any,
    ) -> None:
        super().__init__(root, **settings)
        if labeller not in LABELLERS:
            raise DataError(f"data.labeller={labeller!r}; use one of {LABELLERS}")
        self.labeller = labeller
        self.tables = {"metadata": metadata_csv, labeller: labels_csv, "split": split_csv}
        self.patients = patients

    def read_labels(self) -> LabelledImages:
        paths = {kind: find_table(self.root, kind, given) for kind, given in self.tables.items()}
        metadata = read_table(paths["metadata"], METADATA_COLUMNS, "dicom_id")
        lines = dict(zip(metadata["dicom_id"], np.arange(len(metadata)) + 2, strict=True))
        studies = read_table(
            paths[self.labeller], ("subject_id", "study_id", *CHEXPERT_LABELS), "study_id"
        )
        raw = labeller_values(studies, CHEXPERT_LABELS, str(paths[self.labeller]))
        log.info("read %d images and %d labelled studies from %s", len(metadata), len(studies),
                 self.root)  # fmt: skip
        row = pd.Series(np.arange(len(studies)), index=studies["study_id"])
        study_row = metadata["study_id"].map(row)
        unlabelled = study_row.isna().to_numpy()
        if unlabelled.any():  # the release has a few studies without a report label
            log.warning(
                "%d image(s) of %d studies have no row in %s (no labels): left out, e.g. study %s",
                int(unlabelled.sum()), metadata.loc[unlabelled, "study_id"].nunique(),
                paths[self.labeller].name, metadata.loc[unlabelled, "study_id"].iloc[0],
            )  # fmt: skip
            metadata, study_row = (
                metadata[~unlabelled].reset_index(drop=True),
                study_row[~unlabelled],
            )
        rows = study_row.to_numpy(dtype=np.int64)
        other = studies["subject_id"].to_numpy()[rows] != metadata["subject_id"].to_numpy()
        if other.any():
            i = int(np.flatnonzero(other)[0])
            raise DataError(
                f"study {metadata['study_id'].iloc[i]} is subject {metadata['subject_id'].iloc[i]}'s "
                f"in {paths['metadata'].name} but not in {paths[self.labeller].name}: use the "
                "tables of one release"
            )
        columns = [CHEXPERT_LABELS.index(name) for name in self.pathologies]
        labels = self.policy.targets(raw[rows][:, columns], self.pathologies, raw[rows])
        view = metadata["ViewPosition"].fillna("").str.strip().str.upper()
        table = pd.DataFrame(
            {
                IMAGE: metadata["dicom_id"].to_numpy(),
                PATIENT: metadata["subject_id"].to_numpy(),
                "study_id": metadata["study_id"].to_numpy(),
                VIEW: view.to_numpy(),
                FRONTAL: view.isin(FRONTAL_VIEWS).to_numpy(),
            }
        )
        if self.patients:
            table = pd.concat([table, patient_metadata(self.patients, metadata)], axis=1)
        table["split"], unmatched = self._split(table, paths["split"], lines, paths["metadata"])
        source = f"{paths['metadata']} and {paths[self.labeller]}"
        images = filter_views(LabelledImages(table, labels, source), self.view_position, "MIMIC")
        used = images.table["split"].notna().to_numpy()
        table = images.table[used].reset_index(drop=True)
        table["path"] = image_paths(self.root, table, paths["metadata"], lines)
        return LabelledImages(table, images.labels[used], source, unmatched)

    def _split(
        self, table: pd.DataFrame, split_csv: Path, metadata_ids: Iterable[str], metadata_csv: Path
    ) -> tuple[pd.Series, pd.DataFrame | None]:
        """Each image's split, and (official split) the split table's rows whose dicom_id has
        no row in ``metadata_csv`` (of ids ``metadata_ids``)."""
        method, args = self.split_args.get("method", "official"), self.split_args
        unmatched = None
        if method == "official":
            listed = read_table(split_csv, ("dicom_id", "study_id", "subject_id", "split"),
                                "dicom_id")  # fmt: skip
            names = listed["split"].fillna("").str.strip()
            unknown = np.flatnonzero(~names.isin(list(SPLIT_NAMES)).to_numpy())
            if len(unknown):
                i = int(unknown[0])
                raise DataError(
                    f"{split_csv}, line {i + 2}: split is {listed['split'].iloc[i]!r}; the "
                    f"release writes one of {list(SPLIT_NAMES)}"
                )
            split = table[IMAGE].map(pd.Series(names.map(SPLIT_NAMES).to_numpy(),
                                               index=listed["dicom_id"]))  # fmt: skip
            if split.isna().any():
                log.warning("%d image(s) are not in %s: not used", int(split.isna().sum()),
                            split_csv)  # fmt: skip
            orphan = ~listed["dicom_id"].isin(set(metadata_ids)).to_numpy()
            if orphan.any():  # a split row naming an image the metadata does not have
                unmatched = unmatched_rows(
                    listed.loc[orphan, "dicom_id"], names[orphan].map(SPLIT_NAMES),
                    str(split_csv), str(metadata_csv),
                )  # fmt: skip
            remedy = f"{split_csv.name} is by patient in the release; use that file"
        elif method == "patient":
            split = patient_split(table, args.get("fractions", (0.7, 0.1, 0.2)),
                                  int(args.get("seed") or 0))  # fmt: skip
            remedy = "report this as a bug"
        else:
            collected = [] if self.file_report.missing_images == "skip" else None
            split, remedy = split_from_file(table, args.get("file"), collected)
            unmatched = collected_unmatched(collected, str(metadata_csv))
        split = split.astype("object")
        assert_no_patient_leak(table, split, remedy)
        return split, unmatched
