"""Honest evaluation headers on the real NIH metadata: ``evaluate preds=`` says which official
lists the images come from, warns (and says in the report) when a "test" score holds images
outside the official test list, and ``official_test_only=true`` keeps the test list's images.
Also: counts are whole numbers in the CSVs and the printed table has no stray index row."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from conftest import compose_config

from chexnet_pl.data.nih import label_index
from chexnet_pl.data.nih_table import class_names, read_data_entry
from chexnet_pl.data.splits import read_name_list
from chexnet_pl.errors import ChexnetError
from chexnet_pl.evaluate import evaluate

QUICK = ("evaluation.bootstrap_samples=0", "evaluation.plots=false", "evaluation.subgroups=[]")


@pytest.fixture(scope="module")
def mixed(nih_meta, tmp_path_factory):
    """600 images of the official test list and 1,400 of train_val, scored from their labels."""
    truth = label_index(read_data_entry(nih_meta / "Data_Entry_2017_v2020.csv.gz"))
    test = read_name_list(nih_meta / "test_list.txt")[:600]
    train_val = read_name_list(nih_meta / "train_val_list.txt")[:1400]
    names = test + train_val
    labels = truth.loc[names, class_names()].to_numpy()
    scores = np.round(0.3 * labels + np.random.default_rng(0).random(labels.shape) * 0.7, 3)
    table = pd.DataFrame(scores, columns=[f"prob_{c}" for c in class_names()])
    table.insert(0, "Image Index", names)
    path = tmp_path_factory.mktemp("preds") / "mixed.csv"
    table.to_csv(path, index=False)
    return path, test, labels


def test_a_mixed_file_is_not_called_a_test_score(mixed, nih_meta, tmp_path, caplog):
    path, _, _ = mixed
    with caplog.at_level(logging.INFO):
        evaluate(
            compose_config("evaluate", tmp_path, f"preds={path}", f"data.root={nih_meta}", *QUICK)
        )
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                   and "official test list" in r.getMessage())  # fmt: skip
    assert "1400 of the 2000 scored images are not in the official test list" in warning
    assert "official_test_only=true" in warning
    header = next(line for line in caplog.text.splitlines() if "test split:" in line)
    assert ("mixed.csv, 2000 images: 600 in test_list.txt, 1400 in train_val_list.txt — 1400 "
            "are NOT in the official test list (test_list.txt): not a test score") in header  # fmt: skip
    aucs = pd.read_csv(tmp_path / "aucs.csv", index_col="class")
    assert aucs["paper_auroc"].isna().all()  # no comparison with the paper's test AUROCs
    report = caplog.text.split(header, 1)[1]
    assert "paper_auroc" not in report.splitlines()[1]


def test_official_test_only_scores_the_test_list(mixed, nih_meta, tmp_path, caplog):
    path, test, labels = mixed
    with caplog.at_level(logging.INFO):
        evaluate(compose_config("evaluate", tmp_path, f"preds={path}", f"data.root={nih_meta}",
                                "official_test_only=true", *QUICK))  # fmt: skip
    assert "scoring the 600 of 2000 images that are in test_list.txt" in caplog.text
    assert not [r for r in caplog.records if "not in the official test list" in r.getMessage()]
    aucs = pd.read_csv(tmp_path / "aucs.csv", index_col="class")
    assert (
        aucs.loc[class_names(), "positives"].tolist()
        == labels[:600].sum(axis=0).astype(int).tolist()
    )
    assert aucs.loc["Atelectasis", "paper_auroc"] == pytest.approx(0.8094)
    assert "test split: mixed.csv, 600 images: 600 in test_list.txt;" in caplog.text
    # Counts are written as whole numbers, and the printed table has no "class" row.
    lines = (tmp_path / "aucs.csv").read_text().splitlines()
    positives = lines[0].split(",").index("positives")
    assert all("." not in line.split(",")[positives] for line in lines[1:])
    printed = caplog.text.split("test split: mixed.csv", 1)[1].splitlines()
    assert printed[1].split()[0] == "auroc" and printed[2].split()[0] == "Atelectasis"


def test_official_test_only_is_for_predictions_files(tmp_path):
    cfg = compose_config(
        "evaluate", tmp_path, f"ckpt={tmp_path / 'best.ckpt'}", "official_test_only=true"
    )
    with pytest.raises(ChexnetError, match="official_test_only=true applies to preds="):
        evaluate(cfg)
