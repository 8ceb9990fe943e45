"""Official, patient and file splits; patient leaks are always refused."""

from __future__ import annotations

import pandas as pd
import pytest

from chexnet_pl.config_defaults import shipped
from chexnet_pl.data.nih_table import read_data_entry
from chexnet_pl.data.splits import (
    SplitSettings,
    assert_no_patient_leak,
    file_split,
    make_split,
    official_split,
    patient_split,
)
from chexnet_pl.errors import ConfigError, DataError


def split_settings(**overrides) -> SplitSettings:
    """``data.split`` as shipped (conf/data/nih.yaml) with seed 0, and ``overrides``."""
    return SplitSettings(**{**shipped("data", root=".")["split"], "seed": 0, **overrides})


@pytest.fixture(scope="module")
def real_table(nih_meta):
    return read_data_entry(nih_meta / "Data_Entry_2017_v2020.csv.gz")


def test_official_split_on_real_metadata(real_table, nih_meta):
    split = make_split(real_table, split_settings(val_fraction=0.1, seed=0), nih_meta)
    counts = split.value_counts().to_dict()
    assert counts["test"] == 25596
    assert counts["train"] + counts["val"] == 86524
    patients = real_table.groupby(split)["Patient ID"].nunique()
    assert patients["train"] + patients["val"] == 28008 and patients["test"] == 2797
    assert abs(patients["val"] / 28008 - 0.1) < 0.001
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(real_table["Patient ID"][split == a]) & set(
            real_table["Patient ID"][split == b]
        )
    again = official_split(
        real_table, nih_meta / "train_val_list.txt", nih_meta / "test_list.txt", 0.1, 0
    )
    assert again.equals(split)
    other_seed = official_split(
        real_table, nih_meta / "train_val_list.txt", nih_meta / "test_list.txt", 0.1, 1
    )
    assert not other_seed.equals(split)


def test_patient_split_70_10_20_on_real_metadata(real_table):
    split = patient_split(real_table, (0.7, 0.1, 0.2), seed=3)
    assert split.notna().all()
    assert_no_patient_leak(real_table, split)
    shares = real_table.groupby(split)["Patient ID"].nunique() / real_table["Patient ID"].nunique()
    assert shares.round(3).to_dict() == {"test": 0.2, "train": 0.7, "val": 0.1}


def _table():
    return pd.DataFrame(
        {"Image Index": ["a.png", "b.png", "c.png", "d.png"], "Patient ID": [1, 1, 2, 3]}
    )


def test_file_split_csv_and_txt(tmp_path):
    csv = tmp_path / "split.csv"
    csv.write_text("Image Index,split\na.png,train\nb.png,train\nc.png,val\nd.png,test\n")
    assert file_split(_table(), csv).tolist() == ["train", "train", "val", "test"]
    txt = tmp_path / "split.txt"
    txt.write_text("a.png train\nb.png train\n\nc.png test\n")
    result = file_split(_table(), txt)
    assert result.tolist()[:3] == ["train", "train", "test"] and pd.isna(result.iloc[3])


def test_file_split_errors_name_line_and_value(tmp_path):
    bad_value = tmp_path / "bad.csv"
    bad_value.write_text("Image Index,split\na.png,train\nb.png,validation\n")
    with pytest.raises(DataError, match=r"line 3: split of 'b.png' is 'validation'"):
        file_split(_table(), bad_value)
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("a.png train\nzzz.png test\n")
    with pytest.raises(
        DataError, match=r"1 image\(s\) not in the metadata CSV, e.g. \['zzz.png'\]"
    ):
        file_split(_table(), unknown)


def test_patient_in_two_splits_is_refused(tmp_path):
    leaky = tmp_path / "leaky.csv"
    leaky.write_text("Image Index,split\na.png,train\nb.png,test\nc.png,val\nd.png,test\n")
    with pytest.raises(DataError, match=r"patient 1 in \['test', 'train'\]"):
        make_split(_table(), split_settings(method="file", file=str(leaky)), tmp_path)


def test_bad_split_settings_are_named_together():
    with pytest.raises(ConfigError) as error:
        split_settings(method="random", fractions=[0.7, 0.2, 0.2], val_fraction=1.5)
    assert error.value.problems == [
        "data.split.method='random' is not a valid setting; use one of: official, patient, file",
        "data.split.val_fraction=1.5 is out of range; use a number in [0, 1]",
        "data.split.fractions=[0.7, 0.2, 0.2]: give three non-negative shares (train, val, "
        "test) summing to 1, e.g. [0.7,0.1,0.2]",
    ]
    with pytest.raises(ConfigError, match="data.split.method=file needs data.split.file="):
        split_settings(method="file", file=None)


def _official_lists(folder, train_val: str, test: str, bom: bool = False):
    prefix = "\ufeff" if bom else ""
    (folder / "train_val_list.txt").write_text(prefix + train_val, encoding="utf-8")
    (folder / "test_list.txt").write_text(prefix + test, encoding="utf-8")
    return folder


def test_image_in_both_official_lists_is_named_with_its_lines(tmp_path):
    """Before: b.png silently moved to test (its patient has no other image to trip the leak check)."""
    table = pd.DataFrame({"Image Index": ["a.png", "b.png", "c.png"], "Patient ID": [1, 2, 3]})
    _official_lists(tmp_path, "a.png\nb.png\n", "c.png\n\nb.png\n")
    with pytest.raises(
        DataError,
        match=r"1 image\(s\) are in both .*train_val_list.txt and .*test_list.txt: b.png "
        r"\(line 2 of train_val_list.txt, line 3 of test_list.txt\)",
    ):
        make_split(table, split_settings(), tmp_path)


def test_split_lists_with_a_byte_order_mark_are_read(tmp_path):
    table = _table()
    _official_lists(tmp_path, "a.png\nb.png\nc.png\n", "d.png\n", bom=True)
    split = make_split(table, split_settings(val_fraction=0.0), tmp_path)
    assert split.tolist() == ["train", "train", "train", "test"]
    txt = tmp_path / "split.txt"
    txt.write_text("\ufeffa.png train\nb.png train\nc.png val\nd.png test\n", encoding="utf-8")
    csv = tmp_path / "split.csv"
    csv.write_text("\ufeffImage Index,split\na.png,train\nb.png,train\nc.png,val\nd.png,test\n")
    for path in (txt, csv):
        assert file_split(table, path).tolist() == ["train", "train", "val", "test"]


def test_a_leak_through_the_official_lists_says_what_to_do(tmp_path):
    _official_lists(tmp_path, "a.png\nc.png\nd.png\n", "b.png\n")  # patient 1: a train, b test
    with pytest.raises(DataError) as err:
        make_split(_table(), split_settings(), tmp_path)
    message = str(err.value)
    assert "patient 1 in ['test', 'train']" in message and "fix the split file" not in message
    assert "use the lists of the same release as the CSV, or data.split.method=patient" in message
