"""CheXpert v1.0 (Irvin et al., AAAI 2019; Stanford ML Group): ``data=chexpert``.

A download holds ``CheXpert-v1.0-small/`` (JPEGs around 390×320, ~11 GB) or ``CheXpert-v1.0/``
(full size, ~440 GB), each with ``train.csv`` (223,414 images of 64,540 patients, labels from the
CheXpert labeller) and ``valid.csv`` (234 images of 200 patients, labelled by radiologists).
``Path`` in the tables is relative to the folder that holds ``CheXpert-v1.0*/``; ``data.root``
may be that folder or the release folder itself.

Splits (``data.split.method``): official — a seeded ``val_fraction`` of train.csv's patients is
validation, the rest training, and valid.csv (the official validation set, never trained on) is
the test split (with ``split.valid_csv=val`` it is the validation split instead, all of
train.csv trains and there is no test split); patient — a
seeded patient-level train/val/test split of train.csv; file — a CSV of ``Image Index`` (the
``Path``) and ``split``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chexnet_pl.data.chexpert_labeller import LabellerDataModule
from chexnet_pl.data.csv_table import read_csv_table
from chexnet_pl.data.labelled_images import LabelledImages, collected_unmatched, filter_views
from chexnet_pl.data.nih_table import IMAGE, PATIENT, VIEW
from chexnet_pl.data.settings import FRONTAL
from chexnet_pl.data.splits import (
    assert_no_patient_leak,
    hold_out_validation,
    patient_split,
    split_from_file,
)
from chexnet_pl.data.table_paths import files_in_folder
from chexnet_pl.data.uncertainty import (
    CHEXPERT_LABELS,
    labeller_values,
)
from chexnet_pl.errors import DataError

log = logging.getLogger(__name__)

PATH, SEX, AGE, FRONTAL_LATERAL, AP_PA = "Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"
REQUIRED_COLUMNS = (PATH, SEX, AGE, FRONTAL_LATERAL, AP_PA, *CHEXPERT_LABELS)
RELEASES = ("CheXpert-v1.0-small", "CheXpert-v1.0")
VALID_CSV_SPLITS = ("test", "val")
PATIENT_IN_PATH = r"patient(\d+)/"


def find_release(root: str | Path) -> Path:
    """The folder with ``train.csv``: ``root`` itself, or its ``CheXpert-v1.0-small/`` or
    ``CheXpert-v1.0/`` (only one of them, or the choice is the user's)."""
    root = Path(root).expanduser()
    if (root / "train.csv").is_file():
        return root
    found = [root / name for name in RELEASES if (root / name / "train.csv").is_file()]
    if len(found) == 1:
        return found[0]
    if found:
        raise DataError(
            f"{root} holds both {found[0].name}/ and {found[1].name}/: point data.root at the "
            "one to use"
        )
    raise DataError(
        f"no CheXpert train.csv in {root}: expected {root}/CheXpert-v1.0-small/train.csv (or "
        "CheXpert-v1.0/), or give data.root=<the folder with train.csv>, or data.csv="
    )


def read_chexpert_csv(path: str | Path) -> pd.DataFrame:
    """A CheXpert table (train.csv or valid.csv) checked: columns, rows, unique paths, a patient in
    every path, Frontal/Lateral values. Labels are checked by ``labeller_values``."""
    path = Path(path)
    table = read_csv_table(
        path,
        "CheXpert table",
        REQUIRED_COLUMNS,
        f"CheXpert's tables have {list(REQUIRED_COLUMNS)}.",
        {PATH: str, SEX: str, FRONTAL_LATERAL: str, AP_PA: str},
    )
    table[PATH] = table[PATH].fillna("").str.strip()
    blank = np.flatnonzero((table[PATH] == "").to_numpy())
    if len(blank):
        raise DataError(f"{path}: empty '{PATH}' on line(s) {[int(i) + 2 for i in blank[:5]]}")
    duplicated = table[PATH].duplicated(keep=False).to_numpy()
    if duplicated.any():
        first = table[PATH][duplicated].iloc[0]
        lines = [int(i) + 2 for i in np.flatnonzero((table[PATH] == first).to_numpy())]
        raise DataError(f"{path}: {first!r} is on more than one row (lines {lines})")
    patient = table[PATH].str.extract(PATIENT_IN_PATH, expand=False)
    if patient.isna().any():
        i = int(np.flatnonzero(patient.isna().to_numpy())[0])
        raise DataError(
            f"{path}, line {i + 2}: {table[PATH].iloc[i]!r} names no patient "
            "(CheXpert paths read <release>/<train|valid>/patientNNNNN/studyN/viewN_<view>.jpg)"
        )
    table[PATIENT] = patient.astype(np.int64)
    view = table[FRONTAL_LATERAL].fillna("").str.strip()
    bad_view = ~view.isin(["Frontal", "Lateral"]).to_numpy()
    if bad_view.any():
        i = int(np.flatnonzero(bad_view)[0])
        raise DataError(
            f"{path}, line {i + 2}: {FRONTAL_LATERAL} is {table[FRONTAL_LATERAL].iloc[i]!r}; "
            "use Frontal or Lateral"
        )
    table[FRONTAL] = (view == "Frontal").to_numpy()
    return table


def normalised(
    table: pd.DataFrame, release: Path, source: str | Path | None = None
) -> pd.DataFrame:
    """CheXpert's columns under the names every dataset's table uses: ``Image Index`` (the
    ``Path``), ``Patient Gender`` (M/F), ``Patient Age``, ``View Position`` (AP, PA; LATERAL for
    laterals) and ``path`` (the file, NaN when it is not on disk). A ``Path`` leading outside
    ``release`` (``../``, absolute, a link out) stops, naming ``source`` and its line."""
    sex = table[SEX].fillna("").str.strip().map({"Male": "M", "Female": "F"}).fillna("")
    ap_pa = table[AP_PA].fillna("").str.strip()
    view = ap_pa.where((ap_pa != "") | table[FRONTAL], "LATERAL")
    # Path's first part is the release folder (the one holding the table), whatever it is named.
    files = files_in_folder(
        release,
        [p if os.path.isabs(p) else p.split("/", 1)[-1] for p in table[PATH]],
        source or release / "train.csv",
        PATH,
        (np.arange(len(table)) + 2).tolist(),
        table[PATH].tolist(),
    )
    return pd.DataFrame(
        {
            IMAGE: table[PATH].to_numpy(),
            PATIENT: table[PATIENT].to_numpy(),
            "Patient Gender": sex.to_numpy(),
            "Patient Age": pd.to_numeric(table[AGE], errors="coerce").to_numpy(),
            VIEW: view.to_numpy(),
            FRONTAL: table[FRONTAL].to_numpy(),
            "path": files,
        }
    )


class CheXpertDataModule(LabellerDataModule):
    """CheXpert v1.0 (small or full): its 14 labels with an uncertainty policy.

    Args:
        root: the folder holding ``CheXpert-v1.0-small/`` (or ``CheXpert-v1.0/``), or that folder.
        csv / valid_csv: train.csv / valid.csv when not at their place in the release.
        split: ``method`` (official | patient | file), ``val_fraction``, ``fractions``, ``file``,
            ``seed``, ``valid_csv`` (official: valid.csv is the test split, or the val split).
        The other arguments are ``LabellerDataModule``'s (labels, views, uncertainty) and
        ``ChestXrayDataModule``'s.
    """

    def __init__(self, root: str, csv: str | None, valid_csv: str | None, **settings: Any) -> None:
        super().__init__(root, **settings)
        if self.split_args.get("valid_csv", "test") not in VALID_CSV_SPLITS:
            raise DataError(
                f"data.split.valid_csv={self.split_args.get('valid_csv')!r}; use one of "
                f"{VALID_CSV_SPLITS}"
            )
        self.csv = Path(csv).expanduser() if csv else None
        self.valid_csv = Path(valid_csv).expanduser() if valid_csv else None

    def read_labels(self) -> LabelledImages:
        train_csv = self.csv or find_release(self.root) / "train.csv"
        train = read_chexpert_csv(train_csv)
        tables = [(train, train_csv)]
        method = self.split_args.get("method", "official")
        valid_csv = self.valid_csv or train_csv.with_name("valid.csv")
        if method == "official":
            if not valid_csv.is_file():
                raise DataError(
                    f"no valid.csv at {valid_csv}: the official split scores CheXpert's "
                    "validation set. Give data.valid_csv=, or use data.split.method=patient"
                )
            tables.append((read_chexpert_csv(valid_csv), valid_csv))
        frames, labels = [], []
        for table, source in tables:
            raw = labeller_values(table, CHEXPERT_LABELS, str(source))
            frames.append(normalised(table, source.parent, source))
            columns = [CHEXPERT_LABELS.index(name) for name in self.pathologies]
            labels.append(self.policy.targets(raw[:, columns], self.pathologies, raw))
        log.info("read %s", ", ".join(f"{len(t)} rows from {s}" for t, s in tables))
        table = pd.concat(frames, ignore_index=True)
        collected = [] if self.file_report.missing_images == "skip" else None
        table["split"] = self._split(table, len(train), method, collected)
        source = " and ".join(str(s) for _, s in tables)
        images = filter_views(
            LabelledImages(table, np.concatenate(labels), source), self.view_position, "CheXpert"
        )
        used = images.table["split"].notna().to_numpy()
        return LabelledImages(
            images.table[used].reset_index(drop=True), images.labels[used], source,
            collected_unmatched(collected, source),
        )  # fmt: skip

    def _split(
        self,
        table: pd.DataFrame,
        train_rows: int,
        method: str,
        unmatched: list[pd.DataFrame] | None = None,
    ) -> pd.Series:
        """Per row of train.csv (the first ``train_rows``) then valid.csv: its split; a split
        file's images the tables lack go to ``unmatched`` when given (else they stop the run)."""
        args = self.split_args
        seed = int(args.get("seed") or 0)
        from_train = pd.Series(np.arange(len(table)) < train_rows, index=table.index)
        if method == "official":
            valid_as = args.get("valid_csv", "test")
            split = pd.Series(valid_as, index=table.index, dtype="object")
            split[from_train] = "train"
            if valid_as == "test":  # else valid.csv validates, and all of train.csv trains
                split[from_train] = hold_out_validation(
                    table[from_train], split[from_train], float(args.get("val_fraction", 0.1)),
                    seed,
                )  # fmt: skip
            remedy = "train.csv and valid.csv share a patient; use the tables of one release"
        elif method == "patient":
            split = pd.Series(pd.NA, index=table.index, dtype="object")
            split[from_train] = patient_split(
                table[from_train], args.get("fractions", (0.7, 0.1, 0.2)), seed
            )
            remedy = "report this as a bug"
        else:
            split, remedy = split_from_file(table, args.get("file"), unmatched)
        assert_no_patient_leak(table, split, remedy)
        return split
