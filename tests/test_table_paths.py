"""Tables from elsewhere: the image paths they name stay inside their data folder (CheXpert's
``Path``, MIMIC-CXR-JPG's ``dicom_id``, NIH's images), written so or through a link; and MIMIC's
tables are cross-checked (a split row without a metadata row is named, not dropped)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from xray_datasets import write_mimic_tables

from chexnet_pl.config_defaults import shipped_data
from chexnet_pl.data.chexpert import CheXpertDataModule
from chexnet_pl.data.mimic import MimicCxrDataModule
from chexnet_pl.data.nih import NIHDataModule
from chexnet_pl.data.pooled import PooledDataModule
from chexnet_pl.data.table_paths import leaves_folder
from chexnet_pl.errors import DataError

SETTINGS = {"image_size": 32, "batch_size": 4, "num_workers": 0, "cache": "off"}
CHEXPERT = "chexnet_pl.data.chexpert.CheXpertDataModule"
MIMIC = "chexnet_pl.data.mimic.MimicCxrDataModule"
NIH = "chexnet_pl.data.nih.NIHDataModule"


def _chexpert(root: Path, **overrides) -> CheXpertDataModule:
    dm = CheXpertDataModule(**shipped_data(CHEXPERT, root=str(root), **{**SETTINGS, **overrides}))
    dm.setup()
    return dm


def _mimic(root: Path, **overrides) -> MimicCxrDataModule:
    dm = MimicCxrDataModule(**shipped_data(MIMIC, root=str(root), **{**SETTINGS, **overrides}))
    dm.setup()
    return dm


def _mimic_table(root: Path, kind: str) -> pd.DataFrame:
    return pd.read_csv(root / f"mimic-cxr-2.0.0-{kind}.csv.gz", dtype={"dicom_id": str})


@pytest.mark.parametrize(
    ("path", "leaves"),
    [
        ("train/patient1/study1/view1_frontal.jpg", False),
        ("train/patient1/../patient2/view1_frontal.jpg", False),  # stays inside
        ("../x.jpg", True),
        ("train/../../x.jpg", True),
        ("/etc/x.jpg", True),
        ("", True),
        ("a\0b.jpg", True),
    ],
)
def test_which_paths_leave_their_folder(path, leaves):
    assert leaves_folder(path) is leaves


@pytest.fixture
def chexpert_copy(tmp_path, chexpert_root) -> Path:
    return Path(shutil.copytree(chexpert_root, tmp_path / "data" / "chexpert"))


def _outside_jpeg(tmp_path: Path, chexpert_root: Path) -> Path:
    """A real JPEG outside the data root, at a path with a patient in it."""
    source = next((chexpert_root / "CheXpert-v1.0-small" / "train").rglob("*.jpg"))
    outside = tmp_path / "patient00001" / "view1_frontal.jpg"
    outside.parent.mkdir(parents=True)
    shutil.copy(source, outside)
    return outside


@pytest.mark.parametrize(
    "hostile",
    [
        "CheXpert-v1.0-small/../../../patient00001/view1_frontal.jpg",
        "../../../patient00001/view1_frontal.jpg",
        "CheXpert-v1.0-small/train/patient00001/../../../../../patient00001/view1_frontal.jpg",
        "{outside}",  # the absolute path of that JPEG
    ],
)
def test_a_chexpert_path_leaving_the_data_root_is_refused_with_its_line(
    tmp_path, chexpert_root, chexpert_copy, hostile
):
    outside = _outside_jpeg(tmp_path, chexpert_root)
    train_csv = chexpert_copy / "CheXpert-v1.0-small" / "train.csv"
    table = pd.read_csv(train_csv)
    value = hostile.format(outside=outside)
    table.loc[4, "Path"] = value
    table.to_csv(train_csv, index=False)
    with pytest.raises(DataError) as caught:
        _chexpert(chexpert_copy, view_position="all", report_dir=str(tmp_path / "run"))
    assert str(caught.value).startswith(f"{train_csv}, line 6: Path {value!r} leads outside ")
    assert "CheXpert-v1.0-small, the folder its images are read from" in str(caught.value)


def test_a_chexpert_image_linked_to_a_file_outside_is_refused(
    tmp_path, chexpert_root, chexpert_copy
):
    outside = _outside_jpeg(tmp_path, chexpert_root)
    train_csv = chexpert_copy / "CheXpert-v1.0-small" / "train.csv"
    first = pd.read_csv(train_csv)["Path"].iloc[0]
    image = chexpert_copy / first
    image.unlink()
    image.symlink_to(outside)
    with pytest.raises(DataError) as caught:
        _chexpert(chexpert_copy, view_position="all", report_dir=str(tmp_path / "run"))
    assert str(caught.value).startswith(
        f"{train_csv}, line 2: Path {first!r}: its file {image} is a link to {outside}, outside "
        "the data folder"
    )
    # A folder linked out is the same door.
    image.unlink()
    study = image.parent
    shutil.rmtree(study)
    study.symlink_to(outside.parent, target_is_directory=True)
    with pytest.raises(DataError, match=r"is a link to .*patient00001/view1_frontal.jpg, outside"):
        _chexpert(chexpert_copy, view_position="all", report_dir=str(tmp_path / "run"))


def test_links_inside_the_data_root_and_a_linked_root_are_fine(tmp_path, chexpert_copy):
    linked = tmp_path / "linked_root"
    linked.symlink_to(chexpert_copy, target_is_directory=True)
    first = pd.read_csv(chexpert_copy / "CheXpert-v1.0-small" / "train.csv")["Path"].iloc[0]
    image = chexpert_copy / first
    kept = image.with_name("kept.jpg")
    image.rename(kept)
    image.symlink_to(kept)  # a link that stays inside
    dm = _chexpert(linked, view_position="all")
    assert first in set(dm.table["Image Index"])


@pytest.fixture
def mimic_copy(tmp_path, mimic_root) -> Path:
    return Path(shutil.copytree(mimic_root, tmp_path / "data" / "mimic"))


def test_a_mimic_dicom_id_leaving_the_data_root_is_refused_with_its_line(tmp_path, mimic_copy):
    metadata, split = _mimic_table(mimic_copy, "metadata"), _mimic_table(mimic_copy, "split")
    row = int(metadata.index[metadata["ViewPosition"].isin(["PA", "AP"])][0])
    dicom = metadata.at[row, "dicom_id"]
    hostile = "../../../../../secret"
    secret = tmp_path / "data" / "secret.jpg"
    shutil.copy(next((mimic_copy / "files").rglob("*.jpg")), secret)
    metadata.loc[row, "dicom_id"] = hostile
    split.loc[split["dicom_id"] == dicom, "dicom_id"] = hostile
    write_mimic_tables(mimic_copy, {"metadata": metadata, "split": split})
    with pytest.raises(DataError) as caught:
        _mimic(mimic_copy, report_dir=str(tmp_path / "run"))
    assert str(caught.value).startswith(
        f"{mimic_copy / 'mimic-cxr-2.0.0-metadata.csv.gz'}, line {row + 2}: dicom_id {hostile!r} "
        f"leads outside {mimic_copy / 'files'}"
    )


def test_an_nih_image_linked_outside_its_root_is_refused(tmp_path, synthetic_root):
    root = Path(shutil.copytree(synthetic_root, tmp_path / "nih"))
    image = sorted((root / "images").glob("*.png"))[0]
    outside = tmp_path / "elsewhere.png"
    shutil.move(image, outside)
    image.symlink_to(outside)
    dm = NIHDataModule(**shipped_data(NIH, root=str(root), **SETTINGS))
    with pytest.raises(
        DataError, match=rf"image '{image.name}': its file .* is a link to {outside}"
    ):
        dm.setup()


def test_a_pooled_member_is_held_to_its_own_root(tmp_path, chexpert_root, chexpert_copy):
    outside = _outside_jpeg(tmp_path, chexpert_root)
    train_csv = chexpert_copy / "CheXpert-v1.0-small" / "train.csv"
    table = pd.read_csv(train_csv)
    table.loc[0, "Path"] = f"CheXpert-v1.0-small/../../../{outside.parent.name}/{outside.name}"
    table.to_csv(train_csv, index=False)
    member = shipped_data(CHEXPERT, root=str(chexpert_copy), view_position="all")
    pooled = PooledDataModule(
        **shipped_data(
            "chexnet_pl.data.pooled.PooledDataModule",
            datasets={"chexpert": {"_target_": CHEXPERT, **member}},
            **SETTINGS,
        )
    )
    with pytest.raises(DataError, match=rf"{train_csv}, line 2: Path .* leads outside"):
        pooled.setup()


# -- MIMIC's tables cross-checked ------------------------------------------------------------
def test_a_split_row_without_metadata_stops_the_run_or_is_listed_when_skipped(
    tmp_path, mimic_copy, caplog
):
    metadata = _mimic_table(mimic_copy, "metadata")
    frontal = metadata[metadata["ViewPosition"].isin(["PA", "AP"])]
    gone = frontal["dicom_id"].iloc[:3].tolist()
    write_mimic_tables(mimic_copy, {"metadata": metadata[~metadata["dicom_id"].isin(gone)]})
    for dicom in gone:  # the images go too: only the split table still names them
        next((mimic_copy / "files").rglob(f"{dicom}.jpg")).unlink()
    in_split_order = [d for d in _mimic_table(mimic_copy, "split")["dicom_id"] if d in gone]
    run = tmp_path / "run"
    with pytest.raises(DataError) as caught:
        _mimic(mimic_copy, report_dir=str(run))
    message = str(caught.value)
    assert (
        f"3 row(s) of {mimic_copy / 'mimic-cxr-2.0.0-split.csv.gz'} name an image with no row in "
        f"{mimic_copy / 'mimic-cxr-2.0.0-metadata.csv.gz'}, e.g. {in_split_order}"
    ) in message
    assert "data.missing_images=skip" in message
    stopped = pd.read_csv(run / "bad_images.csv")
    assert sorted(stopped["Image Index"]) == sorted(gone)

    dm = _mimic(mimic_copy, report_dir=str(run), missing_images="skip")
    skipped = pd.read_csv(run / "skipped_images.csv")
    assert sorted(skipped["Image Index"]) == sorted(gone)
    assert skipped["reason"].str.contains("no row in mimic-cxr-2.0.0-metadata.csv.gz").all()
    assert set(skipped["split"]) <= {"train", "val", "test"}
    assert not set(gone) & set(dm.table["Image Index"])
    assert "leaving out 3 of" in caplog.text and "split rows without a metadata row" in caplog.text


def test_metadata_rows_without_images_are_counted_and_named(tmp_path, mimic_copy):
    metadata = _mimic_table(mimic_copy, "metadata")
    frontal = metadata[metadata["ViewPosition"].isin(["PA", "AP"])]["dicom_id"].iloc[:2].tolist()
    for dicom in frontal:
        os.unlink(next((mimic_copy / "files").rglob(f"{dicom}.jpg")))
    with pytest.raises(DataError) as caught:
        _mimic(mimic_copy, report_dir=str(tmp_path / "run"))
    assert "2 of " in str(caught.value) and "mimic-cxr-2.0.0-metadata.csv.gz" in str(caught.value)
    assert all(dicom in str(caught.value) for dicom in frontal)


def test_a_split_list_naming_images_the_csv_lacks_stops_or_is_skipped(tmp_path, synthetic_root):
    root = Path(shutil.copytree(synthetic_root, tmp_path / "nih"))
    with open(root / "test_list.txt", "a") as handle:
        handle.write("99999999_000.png\n99999998_000.png\n")
    run = tmp_path / "run"
    with pytest.raises(DataError, match=r"test_list.txt names 2 image\(s\) not in the metadata"):
        NIHDataModule(**shipped_data(NIH, root=str(root), report_dir=str(run), **SETTINGS)).setup()
    dm = NIHDataModule(
        **shipped_data(NIH, root=str(root), report_dir=str(run), missing_images="skip", **SETTINGS)
    )
    dm.setup()
    skipped = pd.read_csv(run / "skipped_images.csv")
    assert skipped["Image Index"].tolist() == ["99999999_000.png", "99999998_000.png"]
    assert set(skipped["split"]) == {"test"}
    assert skipped["reason"].str.startswith("listed in test_list.txt, no row in Data_Entry").all()
    assert len(dm.datasets["test"]) > 0


def test_a_chexpert_split_file_naming_an_image_the_tables_lack(tmp_path, chexpert_copy):
    train = pd.read_csv(chexpert_copy / "CheXpert-v1.0-small" / "train.csv")
    patients = train["Path"].str.extract(r"patient(\d+)/", expand=False)
    split = pd.DataFrame({"Image Index": train["Path"], "split": "train"})
    split.loc[patients.isin(patients.unique()[:10]), "split"] = "val"
    split.loc[patients.isin(patients.unique()[10:20]), "split"] = "test"
    extra = "CheXpert-v1.0-small/train/patient99999/study1/view1_frontal.jpg"
    split = pd.concat([split, pd.DataFrame({"Image Index": [extra], "split": ["val"]})])
    split.to_csv(tmp_path / "split.csv", index=False)
    settings = {"split": {"method": "file", "file": str(tmp_path / "split.csv")}}
    with pytest.raises(DataError, match=r"split.csv names 1 image\(s\) not in the metadata"):
        _chexpert(chexpert_copy, report_dir=str(tmp_path / "run"), **settings)
    _chexpert(chexpert_copy, report_dir=str(tmp_path / "run"), missing_images="skip", **settings)
    skipped = pd.read_csv(tmp_path / "run" / "skipped_images.csv")
    assert skipped[["Image Index", "split"]].values.tolist() == [[extra, "val"]]
