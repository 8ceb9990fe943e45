"""Subgroup performance and underdiagnosis: the vectorised grouped bootstrap against
scikit-learn, age bands (implausible ages), and the subgroup report on the real NIH test
metadata with a bias built in — scored from a predictions file."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import compose_config
from sklearn.metrics import roc_auc_score

from chexnet_pl.data.nih import label_index
from chexnet_pl.data.nih_table import FINDINGS, class_names, read_data_entry
from chexnet_pl.data.splits import read_name_list
from chexnet_pl.errors import ConfigError
from chexnet_pl.evaluate import evaluate
from chexnet_pl.evaluation.report import choose_threshold
from chexnet_pl.evaluation.resampling import GroupedAuroc, PatientResamples
from chexnet_pl.evaluation.runner import underdiagnosis_threshold
from chexnet_pl.evaluation.settings import EvaluationSettings
from chexnet_pl.evaluation.subgroups import GAP, Subgroups, age_bands, score_subgroups
from chexnet_pl.evaluation.subgroups.summary import format_summary


def shipped_subgroups(**changes) -> Subgroups:
    """The subgroup settings of the shipped conf/evaluation/default.yaml, with ``changes``."""
    return dataclasses.replace(EvaluationSettings.from_config(None).subgroup_spec, **changes)


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
    with pytest.raises(ConfigError, match="min_subgroup_images=0 is out of range"):
        shipped_subgroups(min_images=0)
    with pytest.raises(ConfigError, match="underdiagnosis_threshold='roc'.*use one of: youden, f1"):
        shipped_subgroups(underdiagnosis_threshold="roc")


def test_subgroup_settings_are_judged_together():
    with pytest.raises(ConfigError) as error:
        shipped_subgroups(attributes=("sex", "race"), age_edges=(40, 20), max_age=30)
    assert error.value.problems == [
        "evaluation.subgroups[]='race' is not a valid setting; use one of: sex, age, view, dataset, "
        "manufacturer, pediatric",
        "evaluation.age_bands=(40, 20): give increasing positive ages, e.g. [20, 40, 60, 80]",
    ]
    with pytest.raises(ConfigError, match=r"evaluation.max_age=30 is not above the last age band"):
        shipped_subgroups(max_age=30)


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


@pytest.mark.slow  # over ~8 s: the slow tier keeps make test-fast under 3 min
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
    # Underdiagnosis: images with a finding called "No Finding" at the paper's threshold, the
    # F1-maximising one on validation (not the Youden threshold of aucs.csv).
    under = pd.read_csv(tmp_path / "out" / "underdiagnosis.csv").set_index(
        ["attribute", "subgroup"]
    )
    val_frame = truth.loc[val_names]
    nf = class_names().index("No Finding")
    f1_threshold = choose_threshold(
        _biased_scores(val_frame, 1)[:, nf], val_frame["No Finding"].to_numpy(), "f1"
    )
    assert f1_threshold != pytest.approx(thresholds["No Finding"], abs=1e-6)
    assert (under["no_finding_threshold"] == f1_threshold).all()
    has_finding = ~labels[:, nf]
    ap = (test_split["View Position"] == "AP").to_numpy() & has_finding
    missed = scores[:, nf] >= f1_threshold
    assert under.at[("view", "AP"), "underdiagnosis_rate"] == pytest.approx(
        missed[ap].mean(), abs=1e-12
    )
    assert under.at[("view", "AP"), "images_with_finding"] == ap.sum()
    # Means are over the findings usable in every compared subgroup, and the report says which.
    age_mean = table[(table.attribute == "age") & table.finding.str.startswith("Mean")]
    usable = [f for f in FINDINGS if all(cell("age", band, f).note != "too small"
                                         and not np.isnan(cell("age", band, f).auroc)
                                         for band in ("0-20", "20-40", "40-60", "60-80", "80+"))]  # fmt: skip
    assert age_mean["findings_in_mean"].eq(len(usable)).all() and "Hernia" not in usable
    band = cell("age", "80+", FINDINGS[0])
    assert age_mean.set_index("subgroup").at["80+", "auroc"] == pytest.approx(
        np.mean([cell("age", "80+", f).auroc for f in usable]), abs=1e-12
    )
    assert band.images < 300  # a small band, still compared: above the minimum of 30 images
    text = caplog.text
    assert f"age   mean over the {len(usable)} findings usable in every age band" in text
    assert "Hernia" in text.split("age   mean over")[1].splitlines()[0]  # named as left out
    assert "largest gaps: Effusion by sex" in text and "Underdiagnosis:" in text
    assert "F1-maximising on val, as Seyyed-Kalantari et al. 2021" in text


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


def _cohort(seed: int = 3) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """400 images of 200 patients: ages 0-80 in four bands of 99-100 images, two images aged
    85 (an 80+ band too small to compare), no Hernia aged 60-80; scores rank the labels well
    except in the two 80+ images, where they are reversed."""
    rng = np.random.default_rng(seed)
    n = 400
    patients = np.repeat(np.arange(200), 2)
    ages = np.r_[rng.integers(1, 80, n - 2), [85, 85]]
    meta = pd.DataFrame(
        {"Patient ID": patients, "Patient Gender": np.where(patients % 2, "F", "M"),
         "Patient Age": ages, "View Position": np.where(rng.random(n) < 0.5, "PA", "AP")},
        index=pd.Index([f"{i:08d}_000.png" for i in range(n)], name="Image Index"),
    )  # fmt: skip
    labels = (rng.random((n, 15)) < 0.3).astype(float)
    hernia = FINDINGS.index("Hernia")
    labels[(ages >= 60) & (ages < 80), hernia] = 0
    labels[-2:, :] = [[1] * 15, [0] * 15]
    scores = labels * 0.5 + rng.random(labels.shape) * 0.7
    scores[-2:] = 1 - labels[-2:]  # the tiny band is scored backwards: a gap of ~1 if compared
    return meta, labels, scores


def test_small_subgroups_are_marked_and_kept_out_of_gaps_and_means(caplog):
    meta, labels, scores = _cohort()
    names = class_names()
    with caplog.at_level(logging.WARNING):
        result = score_subgroups(
            scores, labels, meta["Patient ID"].to_numpy(), meta, names, [0.5] * 15,
            shipped_subgroups(), bootstrap_samples=50,
        )  # fmt: skip
    table = result.table
    age = table[table.attribute == "age"]
    tiny = age[age.subgroup == "80+"]
    assert (tiny["images"] == 2).all() and (tiny["note"] == "too small").all()  # shown, marked
    assert tiny.loc[tiny.finding == "Atelectasis", "auroc"].item() == 0.0  # its value is kept
    compared = ["0-20", "20-40", "40-60", "60-80"]
    common = [f for f in FINDINGS if f != "Hernia"]  # no Hernia positives aged 60-80
    mean_rows = age[age.finding.str.startswith("Mean")].set_index("subgroup")
    assert (mean_rows["findings_in_mean"] == 13).all()
    assert (mean_rows["findings_left_out"] == "Hernia").all()
    expected = {}
    for band in compared:
        rows = _band(meta, band)
        expected[band] = np.mean(
            [
                roc_auc_score(labels[rows, names.index(f)], scores[rows, names.index(f)])
                for f in common
            ]
        )
        assert mean_rows.at[band, "auroc"] == pytest.approx(expected[band], abs=1e-12)
        assert rows.sum() >= 30
    gap = age[(age.subgroup == GAP) & age.finding.str.startswith("Mean")].iloc[0]
    assert gap.auroc == pytest.approx(max(expected.values()) - min(expected.values()), abs=1e-12)
    assert gap.subgroups_compared == 4  # 80+ left out
    atelectasis_gap = age[(age.subgroup == GAP) & (age.finding == "Atelectasis")].iloc[0]
    assert atelectasis_gap.auroc < 0.5  # the backwards 2-image band would give ~0.8+
    sex_mean = table[(table.attribute == "sex") & table.finding.str.startswith("Mean")]
    assert (sex_mean["findings_in_mean"] == 14).all()
    # One count of undefined cells, the same in the warning and the summary.
    undefined = table[
        (table.subgroup != GAP) & ~table.finding.str.startswith("Mean") & table.auroc.isna()
    ]
    assert f"AUROC undefined (no positives or no negatives) in {len(undefined)} of" in caplog.text
    summary = format_summary(result)
    assert (
        f"undefined AUROC (no positives or negatives): {len(undefined)} subgroup cell(s)" in summary
    )
    assert "80+ " in summary and "n=2 [too small]" in summary
    assert "age   mean over the 13 findings usable in every age band (left out: Hernia)" in summary
    assert "sex   mean over the 14 findings usable in both sexes:" in summary


def _band(meta: pd.DataFrame, band: str) -> np.ndarray:
    low, high = (int(v) for v in band.split("-"))
    return ((meta["Patient Age"] >= low) & (meta["Patient Age"] < high)).to_numpy()


@pytest.mark.parametrize(("rule", "words"), [("f1", "F1-maximising on val, as Seyyed-Kalantari"),
                                              ("youden", "Youden's J on val")])  # fmt: skip
def test_underdiagnosis_threshold_follows_the_setting_and_says_which(rule, words):
    meta, labels, scores = _cohort()
    names = class_names()
    nf = names.index("No Finding")
    spec = shipped_subgroups(underdiagnosis_threshold=rule)
    chosen = underdiagnosis_threshold(scores[:200], labels[:200], names, spec, "val")
    assert chosen.value == choose_threshold(scores[:200, nf], labels[:200, nf], rule)
    result = score_subgroups(
        scores, labels, meta["Patient ID"].to_numpy(), meta, names, [0.5] * 15, spec,
        bootstrap_samples=20, no_finding_threshold=chosen,
    )  # fmt: skip
    under = result.underdiagnosis
    women = (meta["Patient Gender"] == "F").to_numpy() & (labels[:, nf] < 0.5)
    rate = (scores[women, nf] >= chosen.value).mean()
    row = under[(under.attribute == "sex") & (under.subgroup == "F")].iloc[0]
    assert (
        row.underdiagnosis_rate == pytest.approx(rate, abs=1e-12)
        and row.no_finding_threshold == chosen.value
    )
    assert words in format_summary(result) and words in row.threshold_rule
    assert (
        EvaluationSettings.from_config(None).underdiagnosis_threshold == "f1"
    )  # the paper's, shipped


def test_subgroup_settings_are_checked_before_anything_runs():
    from chexnet_pl.errors import ConfigError

    with pytest.raises(ConfigError, match="evaluation.min_subgroup_positives=-1"):
        EvaluationSettings.from_config({"min_subgroup_positives": -1})
    with pytest.raises(ConfigError, match="evaluation.underdiagnosis_threshold='roc'"):
        EvaluationSettings.from_config({"underdiagnosis_threshold": "roc"})
    EvaluationSettings.from_config({})  # the shipped defaults
