"""NIH ChestX-ray14's label set, and its ``Data_Entry_2017.csv`` (2017 and v2020 forms) read into a
table and a label matrix.

NIH's findings are known here only: other code takes the label list from the data (a data
module's ``pathologies``, a checkpoint's ``class_names``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from chexnet_pl.data.csv_table import read_csv_table
from chexnet_pl.errors import DataError
from chexnet_pl.label_sets import NO_FINDING

log = logging.getLogger(__name__)

# The 14 findings in alphabetical order, then No Finding (15 outputs by default); with
# include_no_finding=false the 14 findings alone, as in the CheXNet paper's table.
FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)

IMAGE = "Image Index"
FINDING_LABELS = "Finding Labels"
PATIENT = "Patient ID"
VIEW = "View Position"
REQUIRED_COLUMNS = (IMAGE, FINDING_LABELS, PATIENT, VIEW)
DATA_ENTRY_NAMES = (
    "Data_Entry_2017.csv",
    "Data_Entry_2017_v2020.csv",
    "Data_Entry_2017.csv.gz",
    "Data_Entry_2017_v2020.csv.gz",
)

# Rajpurkar et al. 2017 (CheXNet), Table 1: test AUROC per finding and their mean, the reference
# beside every score on NIH's data (``NIHDataModule.reference_auroc``).
PAPER_AUROC = {
    "Atelectasis": 0.8094, "Cardiomegaly": 0.9248, "Consolidation": 0.7901, "Edema": 0.8878,
    "Effusion": 0.8638, "Emphysema": 0.9371, "Fibrosis": 0.8047, "Hernia": 0.9164,
    "Infiltration": 0.7345, "Mass": 0.8676, "Nodule": 0.7802, "Pleural_Thickening": 0.8062,
    "Pneumonia": 0.7680, "Pneumothorax": 0.8887,
}  # fmt: skip
PAPER_MEAN = 0.841


def class_names(include_no_finding: bool = True) -> list[str]:
    """NIH's labels in model order: the 14 findings, then ``No Finding`` when included."""
    return [*FINDINGS, *([NO_FINDING] if include_no_finding else [])]


def find_data_entry(root: str | Path) -> Path:
    """The metadata CSV inside a download folder, in any of the names NIH has used."""
    root = Path(root)
    for name in DATA_ENTRY_NAMES:
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"no metadata CSV in {root}: expected one of {', '.join(DATA_ENTRY_NAMES)}. "
        "Point data.root at the NIH download folder, or give data.csv=/path/to/Data_Entry_2017.csv"
    )


def _csv_line(index: int) -> int:
    """Line number in the file of a 0-based data row (the header is line 1)."""
    return index + 2


def read_data_entry(path: str | Path) -> pd.DataFrame:
    """Read the metadata CSV, accepting the 2017 trailing comma and the v2020 split headers.

    Returns a table with a fresh 0..N-1 index and ``Patient ID`` as int. Raises DataError
    naming the file, line and value for missing columns, duplicate images or empty labels.
    """
    path = Path(path)
    table = read_csv_table(
        path,
        "metadata CSV",
        REQUIRED_COLUMNS,
        f"NIH's Data_Entry_2017.csv has {list(REQUIRED_COLUMNS)} among its columns.",
        {IMAGE: str, FINDING_LABELS: str, VIEW: str},
    )

    for column in (IMAGE, FINDING_LABELS, VIEW):
        table[column] = table[column].fillna("").str.strip()
    blank = table.index[table[IMAGE] == ""]
    if len(blank):
        raise DataError(f"{path}: empty '{IMAGE}' on line(s) {[_csv_line(i) for i in blank[:5]]}")
    dupes = table[table[IMAGE].duplicated(keep=False)]
    if len(dupes):
        first = dupes.iloc[0][IMAGE]
        lines = [_csv_line(i) for i in dupes.index[dupes[IMAGE] == first]]
        raise DataError(
            f"{path}: {dupes[IMAGE].nunique()} image name(s) appear on more than one row, "
            f"e.g. {first!r} on lines {lines}. Remove the duplicate rows."
        )
    empty_labels = table.index[table[FINDING_LABELS] == ""]
    if len(empty_labels):
        i = empty_labels[0]
        raise DataError(
            f"{path}: empty '{FINDING_LABELS}' for {table.at[i, IMAGE]!r} on line {_csv_line(i)} "
            f"({len(empty_labels)} row(s) in all). Use 'No Finding' for an image without findings."
        )
    patient = pd.to_numeric(table[PATIENT], errors="coerce")
    bad_patient = table.index[patient.isna()]
    if len(bad_patient):
        i = bad_patient[0]
        raise DataError(
            f"{path}: '{PATIENT}' is not a number on line {_csv_line(i)}: {table.at[i, PATIENT]!r}"
        )
    table[PATIENT] = patient.astype(np.int64)
    return table.reset_index(drop=True)


def label_matrix(
    finding_labels: pd.Series, pathologies: Sequence[str], source: str | Path = "metadata"
) -> np.ndarray:
    """Pipe-separated ``Finding Labels`` → float32 matrix, one column per pathology, in order.

    An unknown label is an error naming the row and value; a known label that the class list
    leaves out (``No Finding`` with 14 outputs) is simply not a column.
    """
    split = finding_labels.str.split("|")
    names = split.explode().str.strip()  # one row per label, its row's index kept
    present = names.notna() & (names != "")  # empty and missing labels are no label
    known = set(FINDINGS) | {NO_FINDING}
    unknown = sorted(set(names[present]) - known)
    if unknown:
        value = unknown[0]
        rows = names.index[present & (names == value)]
        raise DataError(
            f"{source}: unknown finding label {value!r} on line {_csv_line(rows[0])} "
            f"({len(rows)} row(s)); known labels are {sorted(known)}"
        )
    row = np.repeat(np.arange(len(split)), split.str.len().fillna(1).to_numpy(dtype=np.int64))
    column = {name: j for j, name in enumerate(pathologies)}
    columns = names.map(column).to_numpy(dtype=np.float64)  # NaN: a label left out
    kept = present.to_numpy() & ~np.isnan(columns)
    matrix = np.zeros((len(finding_labels), len(pathologies)), dtype=np.float32)
    matrix[row[kept], columns[kept].astype(np.int64)] = 1.0
    return matrix
