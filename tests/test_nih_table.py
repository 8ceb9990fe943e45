"""Reading Data_Entry_2017.csv (both releases) and the label matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from chexnet_pl.data.nih_table import (
    FINDINGS,
    class_names,
    find_data_entry,
    label_matrix,
    read_data_entry,
)
from chexnet_pl.errors import DataError
from chexnet_pl.label_sets import NO_FINDING

# The release's counts (v2020), from ../shared/data/README.md.
REAL_COUNTS = {
    "Infiltration": 19894,
    "Effusion": 13317,
    "Atelectasis": 11559,
    "Nodule": 6331,
    "Mass": 5782,
    "Pneumothorax": 5302,
    "Consolidation": 4667,
    "Pleural_Thickening": 3385,
    "Cardiomegaly": 2776,
    "Emphysema": 2516,
    "Edema": 2303,
    "Fibrosis": 1686,
    "Pneumonia": 1431,
    "Hernia": 227,
    "No Finding": 60361,
}


def test_class_order_is_fixed():
    assert class_names() == [*FINDINGS, NO_FINDING]
    assert class_names(include_no_finding=False) == list(FINDINGS)
    assert FINDINGS[0] == "Atelectasis" and FINDINGS[-1] == "Pneumothorax" and len(FINDINGS) == 14


@pytest.fixture(scope="module")
def real_table(nih_meta):
    return read_data_entry(nih_meta / "Data_Entry_2017_v2020.csv.gz")


def test_real_v2020_metadata(real_table):
    assert len(real_table) == 112120
    assert real_table["Patient ID"].nunique() == 30805
    labels = label_matrix(real_table["Finding Labels"], class_names())
    assert labels.dtype == np.float32 and labels.shape == (112120, 15)
    assert dict(zip(class_names(), labels.sum(0).astype(int).tolist(), strict=True)) == REAL_COUNTS
    assert real_table["View Position"].value_counts().to_dict() == {"PA": 67310, "AP": 44810}


def test_14_outputs_drop_no_finding_column(real_table):
    labels = label_matrix(real_table["Finding Labels"].head(1000), class_names(False))
    assert labels.shape == (1000, 14)
    no_finding = real_table["Finding Labels"].head(1000) == "No Finding"
    assert (labels[no_finding.to_numpy()].sum(1) == 0).all()


def test_2017_form_with_trailing_commas_reads_the_same(tmp_path, real_table):
    # The 2017 file ends each line with a comma; write real rows that way.
    rows = real_table.head(200)
    lines = [",".join(rows.columns) + ","]
    lines += [",".join(str(v) for v in row) + "," for row in rows.itertuples(index=False)]
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text("\n".join(lines) + "\n")
    assert pd.read_csv(path).columns[-1].startswith("Unnamed")  # the quirk is really there
    table = read_data_entry(path)
    assert find_data_entry(tmp_path) == path
    pd.testing.assert_frame_equal(
        table[["Image Index", "Finding Labels", "Patient ID", "View Position"]],
        rows[["Image Index", "Finding Labels", "Patient ID", "View Position"]],
    )
    assert not any(c.startswith("Unnamed") for c in table.columns)


def _write(tmp_path, text):
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text(text)
    return path


HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"
)


def test_missing_column_is_named(tmp_path):
    path = _write(tmp_path, "Image Index,Labels,Patient ID,View Position\na.png,Mass,1,PA\n")
    with pytest.raises(DataError, match=r"lacks column\(s\) \['Finding Labels'\]") as err:
        read_data_entry(path)
    assert str(path) in str(err.value)


def test_unknown_label_names_line_and_value(tmp_path):
    path = _write(tmp_path, HEADER + "a.png,Mass,0,1,50,M,PA\nb.png,Mass|Pneumonitis,0,2,50,M,PA\n")
    table = read_data_entry(path)
    with pytest.raises(DataError, match=r"unknown finding label 'Pneumonitis' on line 3"):
        label_matrix(table["Finding Labels"], class_names(), source=path)


def test_duplicate_rows_and_empty_labels(tmp_path):
    dup = _write(tmp_path, HEADER + "a.png,Mass,0,1,50,M,PA\na.png,Mass,0,1,50,M,PA\n")
    with pytest.raises(DataError, match=r"'a.png' on lines \[2, 3\]"):
        read_data_entry(dup)
    empty = _write(tmp_path, HEADER + "a.png,Mass,0,1,50,M,PA\nb.png,,0,2,50,M,PA\n")
    with pytest.raises(DataError, match=r"empty 'Finding Labels' for 'b.png' on line 3"):
        read_data_entry(empty)


def test_missing_csv_says_where_it_looked(tmp_path):
    with pytest.raises(DataError, match="no metadata CSV"):
        find_data_entry(tmp_path)
