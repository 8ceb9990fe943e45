"""MIMIC-CXR-JPG v2 (data=mimic_cxr) on a miniature download that follows PhysioNet's documented
schema column for column: labellers, policies, the official split, views, damaged tables, missing
images, patients' sex and age, the JPEG cache, and an NIH model scored on it."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import compose_config, random_checkpoint
from xray_datasets import (
    MIMIC_LABEL_COLUMNS,
    MIMIC_METADATA_COLUMNS,
    MIMIC_SPLIT_COLUMNS,
    mimic_tables,
    write_mimic_tables,
)

from chexnet_pl.config_defaults import shipped_data
from chexnet_pl.data.mimic import MimicCxrDataModule
from chexnet_pl.data.prepare import build_cache
from chexnet_pl.data.uncertainty import ordered_labels
from chexnet_pl.errors import DataError

TARGET = "chexnet_pl.data.mimic.MimicCxrDataModule"

SETTINGS = {"image_size": 32, "batch_size": 4, "num_workers": 0, "cache": "off"}


def datamodule(root: Path, **overrides) -> MimicCxrDataModule:
    dm = MimicCxrDataModule(**shipped_data(TARGET, root=str(root), **{**SETTINGS, **overrides}))
    dm.setup()
    return dm


def table(root: Path, kind: str) -> pd.DataFrame:
    return pd.read_csv(root / f"mimic-cxr-2.0.0-{kind}.csv.gz", dtype={"dicom_id": str})


def copy_root(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "mimic"))


def test_the_miniature_follows_physionets_schema(mimic_root):
    assert list(table(mimic_root, "metadata").columns) == MIMIC_METADATA_COLUMNS
    assert list(table(mimic_root, "chexpert").columns) == MIMIC_LABEL_COLUMNS
    assert list(table(mimic_root, "negbio").columns) == MIMIC_LABEL_COLUMNS
    assert list(table(mimic_root, "split").columns) == MIMIC_SPLIT_COLUMNS
    files = sorted((mimic_root / "files").rglob("*.jpg"))
    assert len(files) == len(table(mimic_root, "metadata"))
    relative = files[0].relative_to(mimic_root).parts  # files/p10/p10000032/s5.../<dicom>.jpg
    assert relative[1] == relative[2][:3] and relative[3].startswith("s5")


def test_every_image_has_its_studys_labels_under_the_policy(mimic_root):
    dm = datamodule(mimic_root, view_position="all")
    assert dm.pathologies == ordered_labels(True)
    studies = table(mimic_root, "chexpert").set_index("study_id")
    raw = studies.loc[dm.table["study_id"], dm.pathologies].to_numpy()
    assert np.isnan(dm.labels[raw == -1]).all() and (dm.labels[np.isnan(raw)] == 0).all()
    assert np.array_equal(dm.labels[raw == 1], np.ones(int((raw == 1).sum()), np.float32))
    ones = datamodule(mimic_root, view_position="all", uncertain="ones")
    assert (ones.labels[raw == -1] == 1).all()
    negbio = datamodule(mimic_root, view_position="all", labeller="negbio")
    by_negbio = table(mimic_root, "negbio").set_index("study_id")
    raw_negbio = by_negbio.loc[negbio.table["study_id"], dm.pathologies].to_numpy()
    assert (negbio.labels[np.isnan(raw_negbio)] == 0).all() and not np.array_equal(raw, raw_negbio)


def test_the_official_split_and_the_view_filter(mimic_root):
    dm = datamodule(mimic_root, view_position="all")
    official = table(mimic_root, "split").set_index("dicom_id")["split"]
    expected = official.loc[dm.table["Image Index"]].map(
        {"train": "train", "validate": "val", "test": "test"}
    )
    assert list(dm.table["split"]) == list(expected)
    assert dm.table.groupby("Patient ID")["split"].nunique().max() == 1
    frontal = datamodule(mimic_root)
    assert set(frontal.table["View Position"]) == {"PA", "AP"}
    lateral = datamodule(mimic_root, view_position="lateral")
    assert set(lateral.table["View Position"]) <= {"LATERAL", "LL"}
    assert len(frontal.table) + len(lateral.table) == len(dm.table)
    by_patient = datamodule(mimic_root, split={"method": "patient", "seed": 3})
    assert by_patient.table.groupby("Patient ID")["split"].nunique().max() == 1


def test_patients_table_gives_sex_and_age_at_the_study(tmp_path, mimic_root):
    subjects = table(mimic_root, "metadata")["subject_id"].unique()
    patients = pd.DataFrame({"subject_id": subjects, "gender": ["F", "M"] * (len(subjects) // 2),
                             "anchor_age": 50, "anchor_year": 2150,
                             "anchor_year_group": "2008 - 2010", "dod": None})  # fmt: skip
    patients.to_csv(tmp_path / "patients.csv.gz", index=False)
    dm = datamodule(mimic_root, patients=str(tmp_path / "patients.csv.gz"))
    metadata = table(mimic_root, "metadata").set_index("dicom_id")
    years = metadata.loc[dm.table["Image Index"], "StudyDate"].to_numpy() // 10000
    assert np.array_equal(dm.table["Patient Age"].to_numpy(), 50 + years - 2150)
    assert set(dm.table["Patient Gender"]) == {"F", "M"}


def _damage(kind: str, change):
    def edit(root: Path) -> None:
        frame = table(root, kind)
        write_mimic_tables(root, {kind: change(frame)})

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_damage("metadata", lambda t: t.drop(columns=["ViewPosition"])),
         r"metadata.csv.gz lacks column\(s\) \['ViewPosition'\]"),
        (_damage("chexpert", lambda t: t.assign(Edema=[3.0, *t["Edema"][1:]])),
         r"chexpert.csv.gz, line 2, column 'Edema': 3.0 is not a label value"),
        (_damage("split", lambda t: t.assign(split=["valid", *t["split"][1:]])),
         r"split.csv.gz, line 2: split is 'valid'; the release writes one of"),
        (_damage("metadata", lambda t: pd.concat([t, t.head(1)])),
         r"metadata.csv.gz: dicom_id repeats on lines \[2, \d+\]"),
        (_damage("chexpert", lambda t: t.assign(subject_id=["p10", *t["subject_id"][1:].astype(str)])),
         r"chexpert.csv.gz, line 2: subject_id is 'p10', not a number"),
        (lambda root: (root / "mimic-cxr-2.0.0-split.csv.gz").unlink(),
         r"no mimic-cxr-2.0.0-split.csv.gz in .*data.split_csv="),
        (lambda root: (root / "mimic-cxr-2.0.0-metadata.csv.gz").write_bytes(b"\x1f\x8b\x08\x00junk"),
         r"cannot parse .*metadata.csv.gz as a CSV \(is it damaged\?\)"),
    ],
)  # fmt: skip
def test_damaged_tables_say_where(tmp_path, mimic_root, edit, message):
    root = copy_root(mimic_root, tmp_path)
    edit(root)
    with pytest.raises(DataError, match=message):
        datamodule(root)


def test_unlabelled_studies_are_left_out_and_said(tmp_path, mimic_root, caplog):
    root = copy_root(mimic_root, tmp_path)
    labels = table(root, "chexpert")
    write_mimic_tables(root, {"chexpert": labels.iloc[1:]})
    dm = datamodule(root, view_position="all")
    assert labels["study_id"].iloc[0] not in set(dm.table["study_id"])
    assert "have no row in mimic-cxr-2.0.0-chexpert.csv.gz (no labels): left out" in caplog.text
    with pytest.raises(DataError, match=r"data.labeller='chexbert'"):
        MimicCxrDataModule(**shipped_data(TARGET, root=str(root), labeller="chexbert"))


def test_missing_images_stop_the_run_or_are_skipped(tmp_path, mimic_root):
    root = copy_root(mimic_root, tmp_path)
    gone = sorted((root / "files").rglob("*.jpg"))
    frontal = set(table(root, "metadata").query("ViewPosition in ['PA', 'AP']")["dicom_id"])
    removed = [p for p in gone if p.stem in frontal][:2]
    for path in removed:
        path.unlink()
    with pytest.raises(DataError, match=r"2 of \d+ images listed in .*chexpert.csv.gz are not on"):
        datamodule(root, report_dir=str(tmp_path / "run"))
    skipped = datamodule(root, missing_images="skip", report_dir=str(tmp_path / "run"))
    assert not {p.stem for p in removed} & set(skipped.table["Image Index"])


def test_prepare_caches_mimics_jpegs(tmp_path, mimic_root):
    root = copy_root(mimic_root, tmp_path)
    build_cache(root, size=32, workers=1, progress=False)
    assert datamodule(root, cache="required").image_cache is not None


def test_an_nih_checkpoint_evaluates_on_mimic(tmp_path, synthetic_root, mimic_root):
    from chexnet_pl.evaluate import evaluate

    ckpt = random_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt", "resnet18", 32,
                             root=str(synthetic_root))  # fmt: skip
    out = tmp_path / "on_mimic"
    evaluate(compose_config("evaluate", out, f"ckpt={ckpt}", "data=mimic_cxr",
                            f"data.root={mimic_root}", "data.labeller=negbio",
                            "data.num_workers=0", "evaluation.bootstrap_samples=20",
                            "evaluation.plots=false", "evaluation.subgroups=[view]"))  # fmt: skip
    aucs = pd.read_csv(out / "aucs.csv", index_col=0)
    assert "Effusion" in aucs.index and "Mean (7 findings)" in aucs.index
    preds = pd.read_csv(out / "preds.csv")
    official = table(mimic_root, "split").set_index("dicom_id")["split"]
    assert set(official.loc[preds["Image Index"]]) == {"test"}


def test_gzip_tables_and_plain_csv_both_read(tmp_path, mimic_root):
    root = copy_root(mimic_root, tmp_path)
    for kind in ("metadata", "chexpert", "negbio", "split"):
        gz = root / f"mimic-cxr-2.0.0-{kind}.csv.gz"
        with gzip.open(gz, "rt") as handle:
            (root / f"mimic-cxr-2.0.0-{kind}.csv").write_text(handle.read())
        gz.unlink()
    assert len(datamodule(root).table) == len(datamodule(mimic_root).table)
    assert mimic_tables(4, seed=1)["metadata"]["dicom_id"].str.len().eq(44).all()
