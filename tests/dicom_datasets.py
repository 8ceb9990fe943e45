"""Miniature RSNA Pneumonia and SIIM-ACR Pneumothorax downloads for tests: the real tables' first
rows (from ../shared/data) written as the releases ship them, and small generated DICOMs at the
tables' names — RSNA's in ``stage_2_train_images/``, SIIM's nested by study and series — whose
headers carry sex, age, view and patient as the releases' do."""

from __future__ import annotations

import gzip
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from chexnet_pl.data.synthetic import _render

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage, as both releases


def write_xray_dicom(
    path: Path, pixels: np.ndarray, patient: str, sex: str, age: str, view: str
) -> Path:
    """An 8-bit MONOCHROME2 CR DICOM holding ``pixels``, with the header fields the releases fill."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CR_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.BodyPartExamined = "CR", "CHEST"
    ds.PatientID, ds.PatientSex, ds.ViewPosition = patient, sex, view
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ds.PatientAge = age
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # RSNA's files write the age as a bare number ('43')
        warnings.simplefilter("ignore", UserWarning)
        ds.save_as(path, enforce_file_format=True)
    return path


def _people(count: int, seed: int) -> tuple[np.random.Generator, list[str], list[str], list[str]]:
    rng = np.random.default_rng(seed)
    sexes = rng.choice(["M", "F"], count).tolist()
    ages = [str(a) for a in rng.integers(18, 90, count)]
    views = rng.choice(["PA", "AP"], count).tolist()
    return rng, sexes, ages, views


def make_rsna_root(
    dest: Path, labels_zip: Path, images: int = 300, size: int = 64, seed: int = 0,
    table_name: str = "stage_2_train_labels.csv.zip",
) -> Path:  # fmt: skip
    """``dest/stage_2_train_labels.csv.zip`` with the real rows of the first ``images`` images of
    the release's table (all their boxes) and ``dest/stage_2_train_images/<patientId>.dcm``; a
    positive image shows the synthetic demo's Pneumonia lesion."""
    table = pd.read_csv(labels_zip, dtype={"patientId": str})
    first = pd.unique(table["patientId"])[:images]
    rows = table[table["patientId"].isin(set(first))]
    dest.mkdir(parents=True, exist_ok=True)
    write_rsna_table(dest / table_name, rows)
    positive = rows.groupby("patientId", sort=False)["Target"].max()
    rng, sexes, ages, views = _people(len(first), seed)
    for i, name in enumerate(first):
        pixels, _ = _render(size, ["Pneumonia"] if positive[name] else [], rng)
        write_xray_dicom(dest / "stage_2_train_images" / f"{name}.dcm", pixels, name, sexes[i],
                         ages[i], views[i])  # fmt: skip
    return dest


def write_rsna_table(path: Path, rows: pd.DataFrame) -> Path:
    """The labels table as the release ships it (zipped ``stage_2_train_labels.csv``), or plain /
    gzipped by ``path``'s suffix."""
    text = rows.to_csv(index=False)
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("stage_2_train_labels.csv", text)
    elif path.name.endswith(".gz"):
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return path


def make_siim_root(
    dest: Path, rle_csv: Path, images: int = 300, size: int = 64, seed: int = 0,
    patients: int | None = None,
) -> Path:  # fmt: skip
    """``dest/train-rle.csv`` with the real rows of the first ``images`` images of the release's
    table (header ``" EncodedPixels"``, as released) and their DICOMs nested as the release nests
    them, ``dicom-images-train/<study>/<series>/<ImageId>.dcm``; ``patients`` (default: one per
    image) share PatientIDs round-robin; a positive image shows the Pneumothorax lesion."""
    table = pd.read_csv(rle_csv, dtype=str)
    first = pd.unique(table["ImageId"])[:images]
    rows = table[table["ImageId"].isin(set(first))]
    dest.mkdir(parents=True, exist_ok=True)
    rows.to_csv(dest / "train-rle.csv", index=False)
    positive = rows.groupby("ImageId", sort=False)[" EncodedPixels"].agg(
        lambda values: (values.str.strip() != "-1").any()
    )
    rng, sexes, ages, views = _people(len(first), seed)
    count = patients or len(first)
    for i, name in enumerate(first):
        pixels, _ = _render(size, ["Pneumothorax"] if positive[name] else [], rng)
        study, series = f"1.2.276.0.7230010.3.1.2.{i}", f"1.2.276.0.7230010.3.1.3.{i}"
        write_xray_dicom(dest / "dicom-images-train" / study / series / f"{name}.dcm", pixels,
                         f"patient-{i % count:04d}", sexes[i], ages[i], views[i])  # fmt: skip
    return dest


def make_vindr_full_size_root(dest: Path, table_csv: Path, images: int = 24, seed: int = 0) -> Path:
    """``dest/train.csv`` with every row of the real VinBigData table's first ``images`` images,
    and ``dest/train/<image_id>.dicom`` each as large as its boxes need (the release's images are
    ~2,000-3,000 px and its boxes in their pixels; the table has no sizes), else 64 px."""
    table = pd.read_csv(table_csv)
    first = pd.unique(table["image_id"])[:images]
    rows = table[table["image_id"].isin(set(first))].reset_index(drop=True)
    dest.mkdir(parents=True, exist_ok=True)
    rows.to_csv(dest / "train.csv", index=False)
    rng = np.random.default_rng(seed)
    for image, marks in rows.groupby("image_id", sort=False):
        width = int(np.ceil(np.nan_to_num(marks["x_max"].max(), nan=0))) + 16
        height = int(np.ceil(np.nan_to_num(marks["y_max"].max(), nan=0))) + 16
        pixels = rng.integers(0, 255, (max(height, 64), max(width, 64)), dtype=np.uint8)
        write_xray_dicom(dest / "train" / f"{image}.dicom", pixels, image, "M", "050Y", "PA")
    return dest
