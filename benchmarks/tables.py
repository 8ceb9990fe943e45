"""Time reading CheXpert's, MIMIC-CXR-JPG's, PadChest's and VinDr-CXR's tables at full size, as the data modules do (read,
check every cell, apply the uncertainty policy, split by patient, filter views, look for every
image file), beside pandas reading the same files alone.

.venv/bin/python benchmarks/tables.py [--chexpert ../shared/data/chexpert-meta/train.csv.gz]
    [--padchest ../shared/data/padchest-meta/PADCHEST_...csv.gz] [--vindr .../vinbigdata-train.csv.gz]
    [--rsna ../shared/data/rsna-pneumonia-meta] [--siim <siim-pneumothorax-train-rle.csv.gz>]

RSNA Pneumonia and SIIM-ACR Pneumothorax: their real tables (RSNA's with its DICOM header table;
every SIIM mask's RLE checked against the 1024×1024 image).

CheXpert: the real train.csv (223,414 rows of 64,540 patients). MIMIC-CXR-JPG: no real table is
here, so tables of the release's size (377,110 images, 227,827 labelled studies, 65,379 subjects)
are generated in PhysioNet's schema first (not timed). PadChest and VinDr-CXR: their real tables
(160,861 rows; 67,914 rows of 15,000 images), each skipped when not there. No image is on disk: every file lookup
misses, as on a machine holding the tables only.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from chexnet_pl.config_defaults import shipped_data
from chexnet_pl.data.chexpert import CheXpertDataModule
from chexnet_pl.data.mimic import MimicCxrDataModule
from chexnet_pl.data.padchest import TABLE_NAME as PADCHEST_TABLE
from chexnet_pl.data.padchest import PadChestDataModule
from chexnet_pl.data.uncertainty import CHEXPERT_LABELS
from chexnet_pl.data.vindr_cxr import VinDrCXRDataModule

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
MIMIC_SIZE = {"images": 377_110, "studies": 227_827, "subjects": 65_379}


def mimic_tables(folder: Path, seed: int = 0, scale: float = 1.0) -> list[Path]:
    """The four MIMIC-CXR-JPG v2 tables at the release's size (times ``scale``), in its columns."""
    rng = np.random.default_rng(seed)
    size = {key: max(int(count * scale), 10) for key, count in MIMIC_SIZE.items()}
    studies, subjects = size["studies"], size["subjects"]
    subject_of_study = np.sort(rng.integers(0, subjects, studies))
    subject_ids = 10_000_000 + np.arange(subjects) * 137
    study_ids = 50_000_000 + rng.permutation(studies)
    extra = rng.permutation(studies)[: size["images"] - studies]  # studies with a lateral
    image_study = np.sort(np.concatenate([np.arange(studies), extra]))
    lateral = np.r_[False, image_study[1:] == image_study[:-1]]
    words = rng.integers(0, 2**32, (len(image_study), 5), dtype=np.uint64)
    dicom = ["-".join(f"{int(w):08x}" for w in row) for row in words]
    view = np.where(lateral, "LATERAL", np.where(rng.random(len(image_study)) < 0.5, "PA", "AP"))
    subject = subject_ids[subject_of_study[image_study]]
    metadata = pd.DataFrame({
        "dicom_id": dicom, "subject_id": subject, "study_id": study_ids[image_study],
        "PerformedProcedureStepDescription": "CHEST (PA AND LAT)", "ViewPosition": view,
        "Rows": 3056, "Columns": 2544, "StudyDate": 21800506, "StudyTime": 213014.531,
        "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
        "ViewCodeSequence_CodeMeaning": np.where(lateral, "lateral", "postero-anterior"),
        "PatientOrientationCodeSequence_CodeMeaning": "Erect",
    })  # fmt: skip
    values = rng.choice([1.0, 0.0, -1.0, np.nan], p=[0.15, 0.15, 0.05, 0.65],
                        size=(studies, len(CHEXPERT_LABELS)))  # fmt: skip
    labels = pd.DataFrame(values, columns=list(CHEXPERT_LABELS))[sorted(CHEXPERT_LABELS)]
    labels.insert(0, "study_id", study_ids)
    labels.insert(0, "subject_id", subject_ids[subject_of_study])
    split = metadata[["dicom_id", "study_id", "subject_id"]].assign(
        split=np.where(subject % 50 == 0, "test", np.where(subject % 50 == 1, "validate", "train"))
    )
    paths = []
    for name, frame in (("metadata", metadata), ("chexpert", labels), ("negbio", labels),
                        ("split", split)):  # fmt: skip
        path = folder / f"mimic-cxr-2.0.0-{name}.csv.gz"
        frame.to_csv(path, index=False)
        paths.append(path)
    return paths


def dicom_release_rows(folder: Path, rsna: Path, siim: Path) -> list[tuple]:
    """RSNA Pneumonia's real labels table (with its real header table for sex, age and view) and
    SIIM-ACR's real RLE table (every mask's RLE checked), read as their data modules do."""
    from chexnet_pl.data.rsna_pneumonia import RSNAPneumoniaDataModule
    from chexnet_pl.data.siim_pneumothorax import SIIMPneumothoraxDataModule

    rows = []
    labels = rsna / "kaggle_stage_2_train_labels.csv.zip"
    headers = rsna / "kaggle_stage_2_train_images_dicom_headers.csv.gz"
    if labels.is_file():
        base, _ = timed(lambda: [pd.read_csv(labels), pd.read_csv(headers)])
        module = RSNAPneumoniaDataModule(**shipped_data(
            "chexnet_pl.data.rsna_pneumonia.RSNAPneumoniaDataModule", root=str(folder),
            csv=str(labels), headers=str(headers), num_workers=0))  # fmt: skip
        project, images = timed(module.read_labels)
        rows.append(("RSNA Pneumonia labels (real)", len(images.table), base, project))
    if siim.is_file():
        base, _ = timed(lambda: pd.read_csv(siim))
        module = SIIMPneumothoraxDataModule(**shipped_data(
            "chexnet_pl.data.siim_pneumothorax.SIIMPneumothoraxDataModule", root=str(folder),
            csv=str(siim), num_workers=0))  # fmt: skip
        project, images = timed(module.read_labels)
        rows.append(("SIIM-ACR train-rle.csv (real)", len(images.table), base, project))
    return rows


def timed(task) -> tuple[float, object]:
    start = time.perf_counter()
    result = task()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--chexpert", type=Path,
        default=REPO.parent / "shared" / "data" / "chexpert-meta" / "train.csv.gz",
    )  # fmt: skip
    parser.add_argument(
        "--quick",
        action="store_true",
        help="MIMIC-CXR tables at 1%% of the release's size (a smoke run)",
    )
    parser.add_argument("--padchest", type=Path,
                        default=SHARED / "padchest-meta" / f"{PADCHEST_TABLE}.gz")  # fmt: skip
    parser.add_argument("--vindr", type=Path,
                        default=SHARED / "vindr-cxr-meta" / "vinbigdata-train.csv.gz")  # fmt: skip
    shared = REPO.parent / "shared" / "data"
    parser.add_argument("--rsna", type=Path, default=shared / "rsna-pneumonia-meta")
    parser.add_argument("--siim", type=Path, default=shared / "siim-pneumothorax-meta"
                        / "siim-pneumothorax-train-rle.csv.gz")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"pandas {pd.__version__}")  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        base, _ = timed(lambda: pd.read_csv(args.chexpert))
        chexpert = CheXpertDataModule(**shipped_data(
            "chexnet_pl.data.chexpert.CheXpertDataModule", root=str(folder), csv=str(args.chexpert),
            split={"method": "patient"}, num_workers=0))  # fmt: skip
        project, images = timed(chexpert.read_labels)
        rows.append(("CheXpert train.csv (real)", len(images.table), base, project))

        generated = mimic_tables(folder, scale=0.01 if args.quick else 1.0)
        base, _ = timed(lambda: [pd.read_csv(p) for p in generated if "negbio" not in p.name])
        mimic = MimicCxrDataModule(**shipped_data("chexnet_pl.data.mimic.MimicCxrDataModule", root=str(folder), num_workers=0))  # fmt: skip
        project, images = timed(mimic.read_labels)
        rows.append(
            (
                f"MIMIC-CXR-JPG tables (generated{', 1%' if args.quick else ''})",
                len(images.table),
                base,
                project,
            )
        )

        if args.padchest.is_file():  # literal_eval of every Labels list is most of the time
            base, _ = timed(lambda: pd.read_csv(args.padchest))
            padchest = PadChestDataModule(**shipped_data(
                "chexnet_pl.data.padchest.PadChestDataModule", root=str(folder),
                csv=str(args.padchest), num_workers=0))  # fmt: skip
            project, images = timed(padchest.read_labels)
            rows.append(("PadChest table (real)", len(images.table), base, project))
        if args.vindr.is_file():
            base, _ = timed(lambda: pd.read_csv(args.vindr))
            vindr = VinDrCXRDataModule(**shipped_data(
                "chexnet_pl.data.vindr_cxr.VinDrCXRDataModule", root=str(folder),
                csv=str(args.vindr), num_workers=0))  # fmt: skip
            project, images = timed(vindr.read_labels)
            rows.append(("VinDr-CXR train.csv (real)", len(images.table), base, project))
        rows += dicom_release_rows(folder, args.rsna, args.siim)
    print(f"\n{'tables':<34}{'images kept':>12}{'pandas read (s)':>17}{'data module (s)':>17}"
          f"{'ratio':>8}")  # fmt: skip
    for label, kept, base, project in rows:
        print(f"{label:<34}{kept:>12,}{base:>17.2f}{project:>17.2f}{project / base:>7.1f}x")
    print(
        "images kept: the frontal images of the splits (data.view_position=frontal; PadChest: "
        "data.projections=[PA, AP, AP_horizontal] with a Labels list; VinDr-CXR: every image)"
    )


if __name__ == "__main__":
    main()
