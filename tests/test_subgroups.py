"""Subgroup performance and underdiagnosis: the vectorised grouped bootstrap against
scikit-learn, age bands (implausible ages), and the subgroup report on the real NIH test
metadata with a bias built in — scored from a predictions file."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import compose_config
from sklearn.metrics import roc_auc_score

from chexnet_pl.data.nih_table import read_data_entry
from chexnet_pl.data.splits import read_name_list
from chexnet_pl.errors import ConfigError
from chexnet_pl.evaluate import evaluate
from chexnet_pl.evaluation.resampling import GroupedAuroc, PatientResamples
from chexnet_pl.evaluation.runner import label_index
from chexnet_pl.evaluation.subgroups import GAP, Subgroups, age_bands, score_subgroups
from chexnet_pl.labels import FINDINGS, class_names
from chexnet_pl.shipped import shipped


def test_grouped_auroc_equals_scikit_learn_per_group_and_resample():
    rng = np.random.default_rng(0)
    n = 600
    positive = rng.random(n) < 0.3
    scores = np.round(positive * 0.3 + rng.random(n), 1)  # many ties, across groups too
    groups = rng.integers(-1, 4, n)  # -1: in no group
    groups[groups == 2] = 3  # group 2 left empty: undefined, not dropped
    patients = rng.integers(0, 150, n)
    resamples = PatientResamples.of(patients, samples=4, seed=1)
    plan = GroupedAuroc(scores, positive, groups, 4, resamples.codes, resamples.num_patients)
    point = plan.point()
    for g in (0, 1, 3):
        members = groups == g
        assert point[g] == pytest.approx(
            roc_auc_score(positive[members], scores[members]), abs=1e-12
        )
    assert np.isnan(point[2])
    counts = next(resamples.blocks())
    sampled = plan.resampled(counts)
    for b in range(4):
        drawn = counts[resamples.codes, b].astype(int)  # each image as often as its patient
        for g in (0, 3):
            rows = np.repeat(np.flatnonzero(groups == g), drawn[groups == g])
            expected = roc_auc_score(positive[rows], scores[rows])
            assert sampled[b, g] == pytest.approx(expected, abs=1e-9)


def test_age_bands_with_implausible_and_written_ages(caplog):
    ages = pd.Series([0, 19, 20, 39.5, 60, 79, 80, 95, 148, 411, "058Y", None, -3])
    images = pd.Series([f"{i:08d}_000.png" for i in range(len(ages))])
    with caplog.at_level(logging.WARNING):
        labels, names = age_bands(ages, images, shipped_subgroups())
    assert names == ["0-20", "20-40", "40-60", "60-80", "80+"]
    assert list(labels) == ["0-20", "0-20", "20-40", "20-40", "60-80", "60-80", "80+", "80+",
                            "unknown", "unknown", "40-60", "unknown", "unknown"]  # fmt: skip
    assert "4 image(s) have a missing or implausible age" in caplog.text
    assert "00000008_000.png (148)" in caplog.text and "00000009_000.png (411)" in caplog.text
    custom, names = age_bands(
        pd.Series([10, 50, 70]), pd.Series(["a", "b", "c"]), shipped_subgroups(age_edges=(65,))
    )
    assert names == ["0-65", "65+"] and list(custom) == ["0-65", "0-65", "65+"]


def test_subgroup_settings_are_judged_together():
    with pytest.raises(ConfigError) as error:
        Subgroups(attributes=("sex", "race"), age_edges=(40, 20), max_age=30)
    assert error.value.problems == [
        "evaluation.subgroups[]='race' is not a valid setting; use one of: sex, age, view",
        "evaluation.age_bands=(40, 20): give increasing positive ages, e.g. [20, 40, 60, 80]",
    ]
    with pytest.raises(ConfigError, match=r"evaluation.max_age=30 is not above the last age band"):
        shipped_subgroups(max_age=30)


def shipped_subgroups(**overrides) -> Subgroups:
    """``evaluation.subgroups``, ``age_bands`` and ``max_age`` as shipped, with ``overrides``."""
    section = shipped("evaluation")
    values = {"attributes": tuple(section["subgroups"]), "age_edges": tuple(section["age_bands"]),
              "max_age": section["max_age"]}  # fmt: skip
    return Subgroups(**{**values, **overrides})


@pytest.fixture(scope="module")
def test_split(nih_meta):
    truth = label_index(read_data_entry(nih_meta / "Data_Entry_2017_v2020.csv.gz"))
    return truth.loc[read_name_list(nih_meta / "test_list.txt")]


def _biased_scores(frame: pd.DataFrame, seed: int) -> np.ndarray:
    """Noisy label-derived scores; Effusion is scored far worse for women."""
    rng = np.random.default_rng(seed)
    labels = frame[class_names()].to_numpy()
    scores = 0.3 * labels + rng.random(labels.shape) * 0.7
    effusion = FINDINGS.index("Effusion")
    women = (frame["Patient Gender"] == "F").to_numpy()
    scores[women, effusion] = 0.05 * labels[women, effusion] + rng.random(women.sum()) * 0.95
    return np.round(scores, 3)


def _write(path: Path, frame: pd.DataFrame, scores: np.ndarray) -> Path:
    table = pd.DataFrame(scores, columns=[f"prob_{c}" for c in class_names()])
    table.insert(0, "Image Index", frame.index)
    table.to_csv(path, index=False)
    return path


def test_subgroup_report_on_the_real_test_split_from_files(nih_meta, test_split, tmp_path, caplog):
    val_names = read_name_list(nih_meta / "train_val_list.txt")[:6000]
    truth = label_index(read_data_entry(nih_meta / "Data_Entry_2017_v2020.csv.gz"))
    preds = _write(tmp_path / "preds.csv", test_split, scores := _biased_scores(test_split, 0))
    val = _write(
        tmp_path / "val.csv", truth.loc[val_names], _biased_scores(truth.loc[val_names], 1)
    )
    cfg = compose_config("evaluate", tmp_path / "out", f"preds={preds}", f"val_preds={val}",
                         f"data.root={nih_meta}", "evaluation.bootstrap_samples=100",
                         "evaluation.plots=false")  # fmt: skip
    with caplog.at_level(logging.INFO):
        evaluate(cfg)
    table = pd.read_csv(tmp_path / "out" / "subgroups.csv")
    labels = test_split[class_names()].to_numpy() > 0.5
    thresholds = pd.read_csv(tmp_path / "out" / "aucs.csv", index_col="class")["threshold"]

    def cell(attribute, subgroup, finding):
        return table[
            (table.attribute == attribute)
            & (table.subgroup == subgroup)
            & (table.finding == finding)
        ].iloc[0]

    # Every configured subgroup is there, in order, the gap after them.
    assert list(dict.fromkeys(table.loc[table.attribute == "age", "subgroup"])) == [
        "0-20", "20-40", "40-60", "60-80", "80+", GAP,
    ]  # fmt: skip
    # AUROC, counts and operating point of a cell equal a direct computation on its images.
    women = (test_split["Patient Gender"] == "F").to_numpy()
    j = class_names().index("Effusion")
    row = cell("sex", "F", "Effusion")
    assert row.auroc == pytest.approx(roc_auc_score(labels[women, j], scores[women, j]), abs=1e-9)
    assert row.positives == labels[women, j].sum() and row.images == women.sum()
    called = scores[women, j] >= thresholds["Effusion"]
    assert row.tpr == pytest.approx(called[labels[women, j]].mean(), abs=1e-12)
    assert row.fpr == pytest.approx(called[~labels[women, j]].mean(), abs=1e-12)
    # The built-in bias is found: a large gap whose interval excludes zero; none elsewhere by sex.
    gap = cell("sex", GAP, "Effusion")
    assert gap.auroc == pytest.approx(cell("sex", "M", "Effusion").auroc - row.auroc, abs=1e-12)
    assert gap.auroc > 0.15 and gap.ci_low > 0.1
    assert cell("sex", GAP, "Atelectasis").auroc < 0.05
    # A cell with no positives (no Hernia under 20 in the test list) is kept, as undefined.
    hernia = cell("age", "0-20", "Hernia")
    assert hernia.positives == 0 and np.isnan(hernia.auroc) and np.isnan(hernia.ci_low)
    # Underdiagnosis: images with a finding called "No Finding" at its threshold.
    under = pd.read_csv(tmp_path / "out" / "underdiagnosis.csv").set_index(
        ["attribute", "subgroup"]
    )
    has_finding = ~labels[:, class_names().index("No Finding")]
    ap = (test_split["View Position"] == "AP").to_numpy() & has_finding
    missed = scores[:, -1] >= thresholds["No Finding"]
    assert under.at[("view", "AP"), "underdiagnosis_rate"] == pytest.approx(
        missed[ap].mean(), abs=1e-12
    )
    assert under.at[("view", "AP"), "images_with_finding"] == ap.sum()
    assert "Subgroups: mean AUROC over the 14 findings" in caplog.text
    assert "largest gaps: Effusion by sex" in caplog.text and "Underdiagnosis:" in caplog.text


def test_fourteen_outputs_give_no_underdiagnosis_and_say_why(test_split, caplog):
    frame = test_split.iloc[:3000]
    scores = _biased_scores(frame, 2)[:, :14]
    labels = frame[list(FINDINGS)].to_numpy()
    with caplog.at_level(logging.WARNING):
        result = score_subgroups(
            scores, labels, frame["Patient ID"].to_numpy(), frame, list(FINDINGS), [0.5] * 14,
            shipped_subgroups(attributes=("view",)), bootstrap_samples=20,
        )  # fmt: skip
    assert result.underdiagnosis is None
    assert "underdiagnosis needs the 'No Finding' output: this model has 14 outputs" in caplog.text
    assert set(result.table["subgroup"]) == {"PA", "AP", GAP}
