"""The LightningDataModule on generated NIH-format data and on the real sample download."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import small_datamodule

from chexnet_pl.data.images import read_gray
from chexnet_pl.data.nih_table import class_names
from chexnet_pl.data.transforms import eval_transform
from chexnet_pl.errors import ConfigError, DataError


def _datamodule(root, **kwargs):
    return small_datamodule(root, **kwargs)


def test_samples_join_back_to_the_metadata(synthetic_root):
    dm = _datamodule(synthetic_root)
    dm.setup("fit")
    assert dm.pathologies == class_names() and dm.num_classes == 15
    batch = next(iter(dm.train_dataloader()))
    assert batch["img"].dtype == torch.uint8 and batch["img"].shape == (4, 1, 32, 32)
    assert batch["lab"].dtype == torch.float32 and batch["lab"].shape == (4, 15)
    # The image name joins a prediction back to its row, and the labels are that row's.
    metadata = pd.read_csv(synthetic_root / "Data_Entry_2017_v2020.csv").set_index("Image Index")
    for name, labels in zip(batch["name"], batch["lab"], strict=True):
        findings = metadata.loc[name, "Finding Labels"].split("|")
        assert [
            c for c, v in zip(dm.pathologies, labels.tolist(), strict=True) if v == 1
        ] == sorted(findings, key=dm.pathologies.index)
    test_names = set((synthetic_root / "test_list.txt").read_text().split())
    assert set(dm.datasets["test"].table["Image Index"]) == test_names
    assert not set(dm.datasets["train"].table["Patient ID"]) & set(
        dm.datasets["val"].table["Patient ID"]
    )


def test_fourteen_outputs_setting(synthetic_root):
    dm = _datamodule(synthetic_root, include_no_finding=False)
    dm.setup("fit")
    assert dm.num_classes == 14 and dm.datasets["val"][0]["lab"].shape == (14,)


def test_view_position_filter(synthetic_root):
    dm = _datamodule(synthetic_root, view_position="AP")
    dm.setup("fit")
    assert set(dm.table["View Position"]) == {"AP"}


def test_eval_is_deterministic_train_is_augmented(synthetic_root):
    dm = _datamodule(synthetic_root, augment={"hflip": 1.0, "affine": 0.0})
    dm.setup("fit")
    val = dm.datasets["val"]
    assert torch.equal(val[0]["img"], val[0]["img"])
    train = dm.datasets["train"]
    resized = eval_transform(32)(image=read_gray(train.table["path"][0]))["image"]
    assert torch.equal(train[0]["img"][0], torch.from_numpy(resized[:, ::-1].copy()))


def test_evaluating_the_training_split_is_not_augmented(synthetic_root):
    dm = _datamodule(synthetic_root, augment={"hflip": 1.0, "affine": 1.0})
    dm.setup("fit")
    loader = dm.eval_dataloader("train")
    assert [type(t).__name__ for t in loader.dataset.transform.transforms] == ["AreaResize"]
    first = next(iter(loader))["img"]
    assert torch.equal(first, next(iter(dm.eval_dataloader("train")))["img"])


def test_pos_weight_from_training_labels(synthetic_root):
    dm = _datamodule(synthetic_root)
    dm.setup("fit")
    labels = dm.datasets["train"].labels
    expected = (len(labels) - labels.sum(0)) / labels.sum(0)
    np.testing.assert_allclose(dm.pos_weight(), expected, rtol=1e-6)


@pytest.fixture
def partial_download(tmp_path, synthetic_root):
    root = tmp_path / "partial"
    shutil.copytree(synthetic_root, root)
    removed = sorted(p.name for p in (root / "images").iterdir())[::10]
    for name in removed:
        (root / "images" / name).unlink()
    return root, removed


def test_partial_download_stops_with_count_and_examples(partial_download, tmp_path):
    root, removed = partial_download
    with pytest.raises(DataError) as err:
        _datamodule(root, report_dir=str(tmp_path / "run")).setup("fit")
    message = str(err.value)
    assert f"{len(removed)} of 120 images" in message
    assert removed[0] in message and "data.missing_images=skip" in message
    listed = pd.read_csv(tmp_path / "run" / "bad_images.csv")
    assert sorted(listed["Image Index"]) == removed


def test_partial_download_skip_uses_images_present(partial_download, caplog, tmp_path):
    root, removed = partial_download
    dm = _datamodule(root, missing_images="skip", report_dir=str(tmp_path / "run"))
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert f"leaving out {len(removed)} of 120" in caplog.text
    assert len(dm.table) == 120 - len(removed)
    assert not set(removed) & set(dm.table["Image Index"])
    skipped = pd.read_csv(tmp_path / "run" / "skipped_images.csv")  # each one left out, and why
    assert sorted(skipped["Image Index"]) == removed
    assert set(skipped["reason"]) == {f"not on disk under {root}"}


def test_no_images_at_all(tmp_path, synthetic_root):
    root = tmp_path / "meta_only"
    root.mkdir()
    for name in ("Data_Entry_2017_v2020.csv", "train_val_list.txt", "test_list.txt"):
        shutil.copy(synthetic_root / name, root / name)
    with pytest.raises(DataError, match="no images under"):
        _datamodule(root).setup("fit")


def test_real_sample_download(nih_sample):
    """The 59 real images (3 of them RGBA) through the official split and the loaders."""
    dm = _datamodule(
        nih_sample, image_size=64, batch_size=8, split={"method": "official", "val_fraction": 0.2}
    )
    dm.setup("fit")
    sizes = {k: len(v) for k, v in dm.datasets.items()}
    assert sizes["train"] + sizes["val"] == 42 and sizes["test"] == 17
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        for batch in loader:
            assert batch["img"].dtype == torch.uint8 and batch["img"].shape[1:] == (1, 64, 64)
    assert dm.table["Finding Labels"].notna().all()


def test_every_bad_data_setting_is_named_in_one_error(synthetic_root):
    """The data module judges its own settings when it is built (no image read), all at once."""
    with pytest.raises(ConfigError) as error:
        _datamodule(synthetic_root, view_position="LL", missing_images="ignore", num_workers=-1,
                    batch_size=0, decode_check=["tst"], augment={"hflp": 0.5},
                    split={"method": "random"})  # fmt: skip
    assert sorted(error.value.problems) == sorted([
        "data.view_position='LL' is not a valid setting; use one of: all, frontal, lateral, PA, AP",
        "data.missing_images='ignore' is not a valid setting; use one of: error, skip",
        "data.batch_size=0 is out of range; use a whole number in [1, inf]",
        "data.num_workers=-1: give auto or a whole number >= 0",
        "data.decode_check[]='tst' is not a valid setting; use one of: train, val, test "
        "(did you mean test?)",
        "data.augment.hflp is not a setting; did you mean data.augment.hflip?",
        "data.split.method='random' is not a valid setting; use one of: official, patient, file",
    ])  # fmt: skip


def test_a_wrong_root_is_a_data_root_problem(tmp_path, synthetic_root):
    with pytest.raises(ConfigError, match=r"^data.root=/no/such/folder is not a folder; give"):
        _datamodule("/no/such/folder")
    with pytest.raises(ConfigError, match=r"data.root=.*: no metadata CSV in .*Data_Entry_2017"):
        _datamodule(tmp_path)
    lists = tmp_path / "lists"
    shutil.copytree(synthetic_root, lists)
    (lists / "test_list.txt").unlink()
    with pytest.raises(ConfigError, match=r"has no test_list.txt: data.split.method=official"):
        _datamodule(lists)
    _datamodule(lists, split={"method": "patient"})  # needs no official lists
