"""Miniature CheXpert and MIMIC-CXR-JPG downloads for tests: the tables as released (CheXpert's
rows taken from its real train.csv; MIMIC's following PhysioNet's documented schema column for
column) and generated JPEGs at their real paths.

Images carry the synthetic demo's lesions for the findings NIH shares (Effusion drawn for Pleural
Effusion), so a model trained on the synthetic NIH data sees the same signs here.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from chexnet_pl.data.nih_table import FINDINGS
from chexnet_pl.data.synthetic import _render
from chexnet_pl.data.uncertainty import CHEXPERT_LABELS

NIH_NAME = {"Pleural Effusion": "Effusion"}  # the label map's one renamed finding


def write_xray(path: Path, positives: list[str], rng: np.random.Generator, size: int) -> None:
    """A JPEG with a lesion per positive finding NIH also has."""
    findings = [NIH_NAME.get(f, f) for f in positives if NIH_NAME.get(f, f) in FINDINGS]
    image, _ = _render(size, findings, rng)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, mode="L").save(path, quality=90)


def make_chexpert_root(
    dest: Path,
    train_csv: Path,
    patients: int = 80,
    valid_patients: int = 24,
    image_size: int = 64,
    release: str = "CheXpert-v1.0-small",
    seed: int = 0,
) -> Path:
    """``dest/<release>/train.csv`` with the real rows of the first ``patients`` patients of
    ``train_csv``, a ``valid.csv`` (the next ``valid_patients`` patients' frontal images, renamed
    ``valid/patient645NN/...`` and labelled 0/1 as radiologists did), and their JPEGs."""
    rng = np.random.default_rng(seed)
    table = pd.read_csv(train_csv, dtype={"Path": str, "AP/PA": str})
    patient = table["Path"].str.extract(r"patient(\d+)/", expand=False).astype(int)
    order = pd.unique(patient)
    train = table[patient.isin(order[:patients])].copy()
    valid = table[patient.isin(order[patients : patients + valid_patients])].copy()
    valid = valid[valid["Frontal/Lateral"] == "Frontal"].groupby(patient, sort=False).head(1)
    valid["Path"] = [
        f"{release}/valid/patient{64541 + i:05d}/study1/view1_frontal.jpg"
        for i in range(len(valid))
    ]
    labels = list(CHEXPERT_LABELS)
    valid[labels] = (valid[labels] == 1.0).astype(float)  # radiologists: 0 or 1, never blank
    if release != "CheXpert-v1.0-small":
        for frame in (train, valid):
            frame["Path"] = frame["Path"].str.replace("CheXpert-v1.0-small/", f"{release}/")
    folder = dest / release
    folder.mkdir(parents=True, exist_ok=True)
    train.to_csv(folder / "train.csv", index=False)
    valid.to_csv(folder / "valid.csv", index=False)
    for frame in (train, valid):
        for path, values in zip(frame["Path"], frame[labels].to_numpy(), strict=True):
            positives = [name for name, v in zip(labels, values, strict=True) if v == 1.0]
            write_xray(dest / path, positives, rng, image_size)
    return dest


# -- MIMIC-CXR-JPG v2 ------------------------------------------------------------------------
# PhysioNet's mimic-cxr-2.0.0-metadata.csv.gz, column for column.
MIMIC_METADATA_COLUMNS = [
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning",
]  # fmt: skip
# mimic-cxr-2.0.0-chexpert.csv.gz and -negbio.csv.gz: the 14 labels in alphabetical order.
MIMIC_LABEL_COLUMNS = ["subject_id", "study_id", *sorted(CHEXPERT_LABELS)]
MIMIC_SPLIT_COLUMNS = ["dicom_id", "study_id", "subject_id", "split"]
VIEWS = {  # ViewPosition → (procedure, view code meaning), as the release writes them
    "PA": ("CHEST (PA AND LAT)", "postero-anterior"),
    "AP": ("CHEST (PORTABLE AP)", "antero-posterior"),
    "LATERAL": ("CHEST (PA AND LAT)", "lateral"),
    "LL": ("CHEST (PA AND LAT)", "left lateral"),
}


def _dicom_id(rng: np.random.Generator) -> str:
    return "-".join(f"{int(v):08x}" for v in rng.integers(0, 2**32, 5))


def mimic_tables(
    subjects: int = 40, seed: int = 0, studies: tuple[int, int] = (1, 3)
) -> dict[str, pd.DataFrame]:
    """The four tables of a miniature MIMIC-CXR-JPG v2: per study a frontal image (PA or AP) and
    mostly a lateral, labels from both labellers (1, 0, -1 or blank), the official split by
    subject. Subject ids 1NNNNNNN, study ids 5NNNNNNN, dicom ids as the release's."""
    rng = np.random.default_rng(seed)
    metadata, chexpert, negbio, split = [], [], [], []
    labels = sorted(CHEXPERT_LABELS)
    for k in range(subjects):
        subject = 10000032 + 7919 * k
        assigned = {3: "validate", 4: "test"}.get(k % 5, "train")
        for s in range(int(rng.integers(studies[0], studies[1] + 1))):
            study = 50000000 + 104729 * k + 11 * s
            date = 21000101 + 10000 * int(rng.integers(0, 80)) + s
            views = ["PA" if rng.random() < 0.5 else "AP"]
            views += ["LATERAL" if rng.random() < 0.8 else "LL"] if rng.random() < 0.7 else []
            for view in views:
                dicom = _dicom_id(rng)
                procedure, meaning = VIEWS[view]
                metadata.append([
                    dicom, subject, study, procedure, view, 3056, 2544, date,
                    float(rng.integers(0, 235959)) + 0.5, procedure, meaning, "Erect",
                ])  # fmt: skip
                split.append([dicom, study, subject, assigned])
            values = rng.choice([1.0, 0.0, -1.0, np.nan], p=[0.2, 0.2, 0.1, 0.5], size=len(labels))
            chexpert.append([subject, study, *values])
            flip = rng.random(len(labels)) < 0.1  # negbio disagrees now and then
            negbio.append([subject, study, *np.where(flip, np.nan, values)])
    return {
        "metadata": pd.DataFrame(metadata, columns=MIMIC_METADATA_COLUMNS),
        "chexpert": pd.DataFrame(chexpert, columns=MIMIC_LABEL_COLUMNS),
        "negbio": pd.DataFrame(negbio, columns=MIMIC_LABEL_COLUMNS),
        "split": pd.DataFrame(split, columns=MIMIC_SPLIT_COLUMNS),
    }


def write_mimic_tables(root: Path, tables: dict[str, pd.DataFrame]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        with gzip.open(root / f"mimic-cxr-2.0.0-{name}.csv.gz", "wt", newline="") as handle:
            frame.to_csv(handle, index=False)
    return root


def make_mimic_root(dest: Path, subjects: int = 40, image_size: int = 64, seed: int = 0) -> Path:
    """A miniature MIMIC-CXR-JPG v2: the four tables and files/pNN/pNNNNNNNN/sNNNNNNNN/<dicom>.jpg."""
    tables = mimic_tables(subjects, seed)
    write_mimic_tables(dest, tables)
    rng = np.random.default_rng(seed)
    labels = tables["chexpert"].set_index("study_id")
    for dicom, subject, study in tables["metadata"][
        ["dicom_id", "subject_id", "study_id"]
    ].itertuples(index=False):
        row = labels.loc[study]
        positives = [name for name in CHEXPERT_LABELS if row[name] == 1.0]
        path = (
            dest / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"
        )
        write_xray(path, positives, rng, image_size)
    return dest
