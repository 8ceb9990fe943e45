"""Train/val/test assignment by patient: NIH's official lists, a seeded random split, or a file."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chexnet_pl.data.nih_table import IMAGE, PATIENT
from chexnet_pl.errors import DataError
from chexnet_pl.validation import Problems

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_METHODS = ("official", "patient", "file")
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"


@dataclass(frozen=True)
class SplitSettings:
    """``data.split``: how images are assigned to train/val/test (conf/data/nih.yaml)."""

    method: str  # official | patient | file
    val_fraction: float  # official: share of train_val's patients held out for validation
    fractions: Sequence[float]  # patient: train/val/test shares of patients
    file: str | None  # file: CSV (Image Index, split) or TXT of "name split" lines
    seed: int

    def __post_init__(self) -> None:
        problems = Problems("data.split")
        problems.choice("method", self.method, SPLIT_METHODS)
        problems.number("val_fraction", self.val_fraction, minimum=0, maximum=1)
        problems.number("seed", self.seed, integer=True)
        fractions = list(self.fractions) if isinstance(self.fractions, Sequence) else None
        if (
            fractions is None
            or len(fractions) != 3
            or not all(isinstance(f, int | float) and f >= 0 for f in fractions)
            or not np.isclose(sum(fractions), 1.0)
        ):
            problems.add(
                f"data.split.fractions={self.fractions!r}: give three non-negative shares "
                "(train, val, test) summing to 1, e.g. [0.7,0.1,0.2]"
            )
        if self.method == "file":
            if not self.file:
                problems.add("data.split.method=file needs data.split.file=/path/to/split.csv")
            elif not Path(self.file).expanduser().is_file():
                problems.add(f"data.split.file={self.file} is not a file")
        problems.raise_if_any()


def read_numbered_list(path: str | Path) -> list[tuple[str, int]]:
    """(image name, line number) per non-blank line; a UTF-8 byte order mark is allowed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split list not found: {path}")
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    return [(line.strip(), number) for number, line in enumerate(lines, 1) if line.strip()]


def read_name_list(path: str | Path) -> list[str]:
    """One image name per line (blank lines ignored)."""
    return [name for name, _ in read_numbered_list(path)]


def _check_disjoint(
    train_val: list[tuple[str, int]], train_val_list: Path, test: list[tuple[str, int]],
    test_list: Path,
) -> None:  # fmt: skip
    """An image in both official lists would silently count as test; name each with its lines."""
    test_lines = dict(test)
    both = [(name, line, test_lines[name]) for name, line in train_val if name in test_lines]
    if both:
        shown = "; ".join(
            f"{name} (line {a} of {train_val_list.name}, line {b} of {test_list.name})"
            for name, a, b in both[:5]
        )
        more = f" and {len(both) - 5} more" if len(both) > 5 else ""
        raise DataError(
            f"{len(both)} image(s) are in both {train_val_list} and {test_list}: {shown}{more}. "
            "An image belongs to one of them: use the lists that came with the CSV's release, or "
            "remove each from one list."
        )


def _patients_to_fraction(patients: np.ndarray, fraction: float, rng: np.random.Generator) -> set:
    """A seeded random subset of patients holding about ``fraction`` of them."""
    unique = np.unique(patients)
    count = int(round(len(unique) * fraction))
    if fraction > 0 and count == 0 and len(unique) > 1:
        count = 1
    return set(rng.permutation(unique)[:count].tolist())


def _check_listed(
    table: pd.DataFrame,
    names: Sequence[str],
    source: Path,
    unmatched: list[pd.DataFrame] | None = None,
    splits: Sequence[str] | None = None,
) -> None:
    """Stop when ``source`` names images the table lacks; or, given ``unmatched``
    (``data.missing_images=skip``), add them there (with their ``splits``) to be left out and
    listed (``labelled.UNMATCHED_COLUMNS``; ``missing_from`` is the dataset's to fill in)."""
    known = set(table[IMAGE])
    unknown = sorted(set(names) - known)
    if not unknown:
        return
    if unmatched is None:
        raise DataError(
            f"{source} names {len(unknown)} image(s) not in the metadata CSV, e.g. {unknown[:3]}. "
            "Use the split list that came with the same release as the CSV, or set "
            "data.missing_images=skip to leave them out."
        )
    rows = [i for i, name in enumerate(names) if name not in known]
    unmatched.append(
        pd.DataFrame(
            {
                IMAGE: [names[i] for i in rows],
                "split": [splits[i] for i in rows] if splits is not None else "",
                "listed_in": str(source),
                "missing_from": "the metadata table",
            }
        )
    )


def hold_out_validation(
    table: pd.DataFrame, split: pd.Series, val_fraction: float, seed: int = 0
) -> pd.Series:
    """Move a seeded ``val_fraction`` of the train split's *patients* to ``val``."""
    split = split.copy()
    in_train = split == "train"
    val_patients = _patients_to_fraction(
        table.loc[in_train, PATIENT].to_numpy(), val_fraction, np.random.default_rng(seed)
    )
    split[in_train & table[PATIENT].isin(val_patients)] = "val"
    return split


def official_split(
    table: pd.DataFrame,
    train_val_list: str | Path,
    test_list: str | Path,
    val_fraction: float,
    seed: int,
    unmatched: list[pd.DataFrame] | None = None,
) -> pd.Series:
    """NIH's lists; validation is a seeded fraction of train_val's *patients*. Images a list
    names that the table lacks: see ``_check_listed``."""
    train_val_list, test_list = Path(train_val_list), Path(test_list)
    numbered_train_val = read_numbered_list(train_val_list)
    numbered_test = read_numbered_list(test_list)
    _check_disjoint(numbered_train_val, train_val_list, numbered_test, test_list)
    train_val = [name for name, _ in numbered_train_val]
    test = [name for name, _ in numbered_test]
    _check_listed(table, train_val, train_val_list, unmatched, ["train"] * len(train_val))
    _check_listed(table, test, test_list, unmatched, ["test"] * len(test))
    split = pd.Series(pd.NA, index=table.index, dtype="object")
    split[table[IMAGE].isin(train_val)] = "train"
    split[table[IMAGE].isin(test)] = "test"
    split = hold_out_validation(table, split, val_fraction, seed)
    unlisted = int(split.isna().sum())
    if unlisted:
        log.warning(
            "%d image(s) of the CSV are in neither official list; they are not used", unlisted
        )
    return split


def patient_split(table: pd.DataFrame, fractions: Sequence[float], seed: int) -> pd.Series:
    """A seeded random train/val/test split by patient (CheXNet used 70/10/20); ``fractions``
    as ``SplitSettings`` checked them."""
    patients = np.random.default_rng(seed).permutation(np.unique(table[PATIENT].to_numpy()))
    edges = np.round(np.cumsum(fractions) * len(patients)).astype(int)
    assignment = {}
    for name, chunk in zip(SPLITS, np.split(patients, edges[:2]), strict=True):
        assignment.update(dict.fromkeys(chunk.tolist(), name))
    return table[PATIENT].map(assignment).astype("object")


def file_split(
    table: pd.DataFrame, path: str | Path, unmatched: list[pd.DataFrame] | None = None
) -> pd.Series:
    """Image → split from a CSV (columns ``Image Index``, ``split``) or a TXT of ``name split``
    lines. Images it names that the table lacks: see ``_check_listed``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file not found: {path} (data.split.file)")
    if path.suffix.lower() == ".csv":
        listed = pd.read_csv(path, dtype=str, encoding="utf-8-sig")
        listed.columns = [c.strip() for c in listed.columns]
        if IMAGE not in listed.columns or "split" not in listed.columns:
            raise DataError(
                f"{path} needs columns '{IMAGE}' and 'split'; it has {list(listed.columns)}"
            )
        pairs = listed[[IMAGE, "split"]].fillna("").apply(lambda col: col.str.strip())
        lines = pairs.index + 2
    else:
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
            fields = line.replace(",", " ").split()
            if not fields:
                continue
            if len(fields) != 2:
                raise DataError(f"{path}, line {number}: expected 'image split', got {line!r}")
            rows.append((number, *fields))
        lines = pd.Index([r[0] for r in rows])
        pairs = pd.DataFrame([r[1:] for r in rows], columns=[IMAGE, "split"])
    for i, (name, value) in enumerate(zip(pairs[IMAGE], pairs["split"], strict=True)):
        if value not in SPLITS:
            raise DataError(
                f"{path}, line {lines[i]}: split of {name!r} is {value!r}; use one of {SPLITS}"
            )
    if pairs[IMAGE].duplicated().any():
        name = pairs.loc[pairs[IMAGE].duplicated(), IMAGE].iloc[0]
        raise DataError(f"{path}: image {name!r} is listed more than once")
    _check_listed(table, pairs[IMAGE].tolist(), path, unmatched, pairs["split"].tolist())
    return table[IMAGE].map(dict(zip(pairs[IMAGE], pairs["split"], strict=True))).astype("object")


def split_from_file(
    table: pd.DataFrame, file: str | Path | None, unmatched: list[pd.DataFrame] | None = None
) -> tuple[pd.Series, str]:
    """``data.split.method=file``: each image's split as ``file`` lists it, and what to do should
    that split a patient (the remedy ``assert_no_patient_leak`` names); ``unmatched``: see
    ``_check_listed``."""
    if not file:
        raise DataError("data.split.method=file needs data.split.file=/path/to/split.csv")
    remedy = f"fix {file} (data.split.file) so each patient's images share one split"
    return file_split(table, file, unmatched), remedy


def assert_no_patient_leak(
    table: pd.DataFrame, split: pd.Series, remedy: str = "fix the split file"
) -> None:
    """Fail if any patient has images in two splits (that leaks patients into evaluation);
    ``remedy`` says what to do for the split method in use."""
    assigned = pd.DataFrame({PATIENT: table[PATIENT], "split": split}).dropna()
    per_patient = assigned.groupby(PATIENT)["split"].nunique()
    leaked = per_patient[per_patient > 1]
    if len(leaked):
        patient = leaked.index[0]  # a number (NIH, CheXpert, MIMIC) or a string (DICOM ids)
        patient = int(patient) if isinstance(patient, int | np.integer) else patient
        where = sorted(assigned.loc[assigned[PATIENT] == patient, "split"].unique())
        raise DataError(
            f"{len(leaked)} patient(s) have images in more than one split, e.g. patient {patient} "
            f"in {where}. Splits must be by patient: {remedy}."
        )


def make_split(
    table: pd.DataFrame,
    settings: SplitSettings,
    root: str | Path,
    unmatched: list[pd.DataFrame] | None = None,
) -> pd.Series:
    """Dispatch on ``data.split.method`` and check the result for patient leaks; ``unmatched``:
    see ``_check_listed``."""
    root = Path(root)
    if settings.method == "official":
        split = official_split(
            table, root / TRAIN_VAL_LIST, root / TEST_LIST, settings.val_fraction, settings.seed,
            unmatched,
        )  # fmt: skip
        remedy = (
            f"NIH's own {TRAIN_VAL_LIST} and {TEST_LIST} keep each patient in one of them; use "
            "the lists of the same release as the CSV, or data.split.method=patient"
        )
    elif settings.method == "patient":
        split = patient_split(table, settings.fractions, settings.seed)
        remedy = "report this as a bug"
    else:
        split, remedy = split_from_file(table, settings.file, unmatched)
    assert_no_patient_leak(table, split, remedy)
    return split


def split_table(
    table: pd.DataFrame, split: Mapping[str, Any], random_method: str = "patient"
) -> pd.Series:
    """Each row's split for a dataset without an official one (``data.split``): ``method`` =
    ``random_method`` (``patient``; VinDr-CXR calls it ``image``, its table naming no patient):
    seeded ``fractions`` of the ``Patient ID``s; ``file``: a CSV of ``Image Index, split``.
    Checked for patients in two splits."""
    if split.get("method", random_method) == random_method:
        assigned = patient_split(
            table, split.get("fractions", (0.7, 0.1, 0.2)), int(split.get("seed") or 0)
        )
        remedy = "report this as a bug"
    else:
        assigned, remedy = split_from_file(table, split.get("file"))
    assigned = assigned.astype("object")
    assert_no_patient_leak(table, assigned, remedy)
    return assigned
