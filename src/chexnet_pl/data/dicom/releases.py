"""What the DICOM-only releases (RSNA Pneumonia, SIIM-ACR Pneumothorax) share: subgroup metadata
(sex, age, view) and the patient id read from each file's header, without its pixels; and their
split (a seeded split by patient, or a file), refused when it would split a patient."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chexnet_pl.data.labelled_images import AGE, SEX, LabelledImages, filter_views
from chexnet_pl.data.nih_table import IMAGE, PATIENT, VIEW
from chexnet_pl.data.settings import FRONTAL
from chexnet_pl.data.splits import split_table
from chexnet_pl.errors import DataError

log = logging.getLogger(__name__)

# data.split.method of the releases without an official split of their labelled images.
DICOM_SPLIT_METHODS = ("patient", "file")
HEADER_COLUMNS = ("PatientID", SEX, AGE, VIEW)
AGE_UNITS = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}


def dicom_age(value: Any) -> float:
    """A DICOM Patient's Age (``043Y``, ``006M``; or a bare number, as RSNA's files write it) in
    years; NaN when absent or unreadable."""
    match = re.fullmatch(
        r"\s*(\d+(?:\.\d+)?)\s*([YMWD]?)\s*", str(value if value is not None else "")
    )
    if not match:
        return float("nan")
    return float(match[1]) * AGE_UNITS.get(match[2] or "Y", 1.0)


def read_headers(paths: Sequence[str | None]) -> pd.DataFrame:
    """Per file (None: not on disk → blanks): its header's ``PatientID``, sex (M/F, else blank),
    age in years and ``ViewPosition``, read without the pixel data. A file pydicom cannot parse
    gets blanks here; it is reported when its image is checked."""
    import pydicom

    rows = []
    for path in paths:
        if path is None:
            rows.append(("", "", float("nan"), ""))
            continue
        try:
            with warnings.catch_warnings():  # RSNA writes ages as bare numbers ('43'), not AS
                warnings.simplefilter("ignore", UserWarning)
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                age = ds.get("PatientAge")
        except Exception as exc:  # noqa: BLE001  (the image check names the file and reason)
            log.debug("%s: header unreadable (%s)", path, exc)
            rows.append(("", "", float("nan"), ""))
            continue
        sex = str(ds.get("PatientSex", "") or "").strip().upper()[:1]
        rows.append((
            str(ds.get("PatientID", "") or "").strip(),
            sex if sex in ("M", "F") else "",
            dicom_age(age),
            str(ds.get("ViewPosition", "") or "").strip().upper(),
        ))  # fmt: skip
    log.info("read %d DICOM headers (sex, age, view)", sum(p is not None for p in paths))
    return pd.DataFrame(rows, columns=list(HEADER_COLUMNS))


def header_table(path: str | Path, key: str, names: pd.Series) -> pd.DataFrame:
    """A table of the DICOMs' headers (RSNA's ``kaggle_stage_2_train_images_dicom_headers.csv``:
    ``PatientID``, ``PatientSex``, ``PatientAge``, ``ViewPosition``, one row per file) aligned with
    ``names`` (the images, by ``key``: PatientID or the file name without ``.dcm``); images it
    lacks get blanks."""
    from chexnet_pl.data.csv_table import read_csv_table

    path = Path(path).expanduser()
    required = ("PatientSex", "PatientAge", "ViewPosition", key)
    headers = read_csv_table(
        path, "DICOM header table (data.headers)", required,
        f"A header table has one row per DICOM with {list(required)}.",
        {key: str, "PatientSex": str, "ViewPosition": str},
    )  # fmt: skip
    ids = headers[key].fillna("").str.strip().str.removesuffix(".dcm")
    duplicated = ids.duplicated(keep=False).to_numpy()
    if duplicated.any():
        lines = [int(i) + 2 for i in np.flatnonzero(duplicated)[:2]]
        raise DataError(f"{path}: {key} {ids[duplicated].iloc[0]!r} is on lines {lines}; one row "
                        "per DICOM")  # fmt: skip
    headers.index = ids
    rows = headers.reindex(names.to_numpy())
    log.info("%s: headers of %d of %d images", path.name, int(rows["PatientAge"].notna().sum()),
             len(names))  # fmt: skip
    sex = rows["PatientSex"].fillna("").str.strip().str.upper().str[:1]
    return pd.DataFrame(
        {
            "PatientID": rows.index.to_numpy(),
            SEX: sex.where(sex.isin(["M", "F"]), "").to_numpy(),
            AGE: [dicom_age(v) if pd.notna(v) else np.nan for v in rows["PatientAge"]],
            VIEW: rows["ViewPosition"].fillna("").str.strip().str.upper().to_numpy(),
        }
    )


def check_split_method(split: Mapping[str, Any], dataset: str) -> str:
    """``data.split.method`` of a release without an official split: patient or file."""
    method = split.get("method", "patient")
    if method not in DICOM_SPLIT_METHODS:
        raise DataError(
            f"data.split.method={method!r}: {dataset} has no official split of its labelled "
            f"images; use one of {DICOM_SPLIT_METHODS}"
        )
    return method


def labelled_release(
    names: Sequence[str],
    patients: Sequence[str],
    metadata: pd.DataFrame,
    paths: Sequence[str | None],
    labels: np.ndarray,
    source: str,
    split: Mapping[str, Any],
    view_position: str,
    dataset: str,
) -> LabelledImages:
    """A DICOM release's images (RSNA's, SIIM's: one label, PA and AP views only) as the data
    module gives them: the header ``metadata`` under NIH's column names, each image's split
    (``split_table``), the views of ``view_position``, and the images of a split only."""
    table = pd.DataFrame(
        {
            IMAGE: np.asarray(names),
            PATIENT: np.asarray(patients),
            SEX: metadata[SEX].to_numpy(),
            AGE: metadata[AGE].to_numpy(),
            VIEW: metadata[VIEW].to_numpy(),
            FRONTAL: True,  # the releases hold PA and AP views only
            "path": list(paths),
        }
    )
    table["split"] = split_table(table, split)
    selected = filter_views(LabelledImages(table, labels, source), view_position, dataset)
    used = selected.table["split"].notna().to_numpy()
    return LabelledImages(
        selected.table[used].reset_index(drop=True), selected.labels[used], source
    )
