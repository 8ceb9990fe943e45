"""Shortcut audit (``evaluation.stratify``): the unpaired DeLong variance against a pairwise and a
bootstrap computation, a planted Support Devices shortcut found (and none found where there is
none) on CheXpert's real table, the files of a real evaluation, and bad settings refused."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from conftest import compose_config
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

import chexnet_pl
from chexnet_pl.data.chexpert import read_chexpert_csv
from chexnet_pl.data.labelled_images import truth_frame
from chexnet_pl.data.nih import label_index
from chexnet_pl.data.nih_table import IMAGE, PATIENT, class_names, read_data_entry
from chexnet_pl.data.uncertainty import (
    CHEXPERT_LABELS,
    UncertaintyPolicy,
    labeller_values,
    ordered_labels,
)
from chexnet_pl.errors import ConfigError
from chexnet_pl.evaluate import evaluate
from chexnet_pl.evaluation.settings import EvaluationSettings
from chexnet_pl.evaluation.stratified import (
    COLUMNS,
    Pair,
    auroc_variance,
    pairs_for,
    score_stratified,
    unpaired_delong,
)


def _pairwise_variance(scores: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """AUROC and DeLong's variance from the full positive × negative kernel matrix (no ranks):
    psi = 1 where the positive outscores the negative, 1/2 on a tie."""
    pos, neg = scores[positive], scores[~positive]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    m, n = len(pos), len(neg)
    s10 = ((v10 - v10.mean()) ** 2).sum() / (m - 1)
    s01 = ((v01 - v01.mean()) ** 2).sum() / (n - 1)
    return float(psi.mean()), float(s10 / m + s01 / n)


@pytest.mark.slow  # over ~8 s: the slow tier keeps make test-fast under 3 min
def test_unpaired_delong_variance_equals_a_pairwise_computation_and_a_bootstrap():
    rng = np.random.default_rng(3)
    positive = rng.random(150) < 0.4
    scores = np.round(rng.normal(size=150) + 0.8 * positive, 1)  # rounded: ties included
    auroc, variance = auroc_variance(scores, positive)
    expected_auroc, expected_variance = _pairwise_variance(scores, positive)
    assert auroc == pytest.approx(roc_auc_score(positive, scores), abs=1e-12)
    assert auroc == pytest.approx(expected_auroc, abs=1e-12)
    assert variance == pytest.approx(expected_variance, rel=1e-10)
    # DeLong's variance is the asymptotic variance of the AUROC over new cases: a bootstrap
    # keeping the numbers of positives and negatives fixed estimates the same quantity.
    pos, neg = np.flatnonzero(positive), np.flatnonzero(~positive)
    draws = [
        roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))],
                      np.r_[scores[rng.choice(pos, len(pos))], scores[rng.choice(neg, len(neg))]])
        for _ in range(1500)
    ]  # fmt: skip
    assert np.var(draws, ddof=1) == pytest.approx(variance, rel=0.15)
    # Two independent sets: the difference's variance is the sum, the p-value two-sided normal.
    other_positive = rng.random(90) < 0.5
    other = rng.normal(size=90) + 0.2 * other_positive
    test = unpaired_delong(scores, positive, other, other_positive)
    other_auroc, other_variance = _pairwise_variance(other, other_positive)
    z = (expected_auroc - other_auroc) / np.sqrt(expected_variance + other_variance)
    assert test.variance == pytest.approx(expected_variance + other_variance, rel=1e-10)
    assert test.p_value == pytest.approx(2 * norm.sf(abs(z)), rel=1e-8)
    assert np.isnan(unpaired_delong(scores, positive, other[:3], np.array([1, 0, 0]) > 0).p_value)


@pytest.fixture(scope="module")
def chexpert_truth(chexpert_train_csv) -> tuple[pd.DataFrame, list[str], np.ndarray]:
    """The real train.csv's frontal images of every fifth patient (about 37,000 images of 13,000
    patients) as the truth frame the evaluation reads, with U-Ignore and blanks negative (the
    shipped data settings), and each row's raw Support Devices value."""
    table = read_chexpert_csv(chexpert_train_csv)
    table = table[table["Frontal"] & (table[PATIENT] % 5 == 0)].reset_index(drop=True)
    raw = labeller_values(table, CHEXPERT_LABELS, str(chexpert_train_csv))
    names = ordered_labels(True)
    columns = [CHEXPERT_LABELS.index(n) for n in names]
    labels = UncertaintyPolicy().targets(raw[:, columns], names, raw)
    frame = pd.DataFrame({IMAGE: table["Path"], PATIENT: table[PATIENT]})
    return (truth_frame(frame, labels, names), names,
            raw[:, CHEXPERT_LABELS.index("Support Devices")])  # fmt: skip


def _audit(truth: pd.DataFrame, names: list[str], pneumothorax_scores: np.ndarray):
    rng = np.random.default_rng(0)
    scores = rng.random((len(truth), len(names)))
    scores[:, names.index("Pneumothorax")] = pneumothorax_scores
    settings = EvaluationSettings.from_config({"bootstrap_samples": 200})
    pairs = pairs_for(settings.stratify, truth, names)
    table = score_stratified(
        scores, truth[names].to_numpy(), truth[PATIENT].to_numpy(), truth, names, pairs,
        settings.subgroup_spec, settings.bootstrap_samples,
    )  # fmt: skip
    return pairs, table.set_index("stratum")


def test_a_planted_support_devices_shortcut_is_found_on_the_real_chexpert_table(
    chexpert_truth, caplog
):
    """Scores that see a pneumothorax only where a device is (a model reading chest drains)."""
    truth, names, devices = chexpert_truth
    rng = np.random.default_rng(1)
    pneumothorax = truth["Pneumothorax"].fillna(0).to_numpy()
    device = truth["Support Devices"].to_numpy() == 1
    planted = rng.normal(size=len(truth)) + 1.5 * pneumothorax * device
    with caplog.at_level(logging.INFO, logger="chexnet_pl.evaluation.stratified"):
        pairs, table = _audit(truth, names, planted)
    assert pairs == [Pair("Pneumothorax", "Support Devices")]  # auto: CheXpert's default pair
    assert sorted(table.reset_index().columns) == sorted(COLUMNS)
    assert table.at["positive", "auroc"] > 0.8 and table.at["negative", "auroc"] < 0.55
    assert table.at["positive", "delong_p"] < 1e-6
    assert table.at["positive", "compared_with"] == "negative"
    assert table.at["negative", "delong_p"] == table.at["positive", "delong_p"]
    for stratum in ("positive", "negative"):
        assert (
            table.at[stratum, "ci_low"] < table.at[stratum, "auroc"] < table.at[stratum, "ci_high"]
        )
    assert table.at["negative", "ci_high"] < table.at["positive", "ci_low"]
    assert sum("possible shortcut: Pneumothorax" in r.message for r in caplog.records) == 1
    # Strata as the data reads them: blank (not mentioned) is negative, uncertain is unknown
    # (data.uncertain=ignore), and only images with a known Pneumothorax label are counted.
    known = ~np.isnan(truth["Pneumothorax"].to_numpy())
    assert table.at["positive", "n"] == int((known & (devices == 1)).sum())
    assert table.at["negative", "n"] == int((known & ((devices == 0) | np.isnan(devices))).sum())
    assert table.at["unknown", "n"] == int((known & (devices == -1)).sum()) > 0
    assert table.at["unknown", "note"] == "unknown" and np.isnan(table.at["unknown", "delong_p"])
    assert table.at["positive", "n_pos"] == int(pneumothorax[known & (devices == 1)].sum())


def test_no_shortcut_is_found_where_the_scores_ignore_the_devices(chexpert_truth, caplog):
    truth, names, _ = chexpert_truth
    rng = np.random.default_rng(2)
    pneumothorax = truth["Pneumothorax"].fillna(0).to_numpy()
    honest = rng.normal(size=len(truth)) + 1.0 * pneumothorax
    with caplog.at_level(logging.WARNING, logger="chexnet_pl.evaluation.stratified"):
        _, table = _audit(truth, names, honest)
    assert abs(table.at["positive", "auroc"] - table.at["negative", "auroc"]) < 0.03
    assert table.at["positive", "delong_p"] > 0.05
    assert not any("possible shortcut" in r.message for r in caplog.records)


def _nih_preds(root, path, seed=0):
    truth = label_index(read_data_entry(root / "Data_Entry_2017_v2020.csv"))
    labels = truth[class_names()].to_numpy()
    scores = np.clip(0.4 * labels + 0.6 * np.random.default_rng(seed).random(labels.shape), 0, 1)
    frame = pd.DataFrame(scores, columns=[f"prob_{c}" for c in class_names()])
    frame.insert(0, IMAGE, truth.index)
    frame.to_csv(path, index=False)
    return path, truth


@pytest.mark.slow  # over ~8 s: the slow tier keeps make test-fast under 3 min
def test_chexnet_evaluate_writes_the_audit_of_each_finding_by_view_on_nih(
    synthetic_root, tmp_path, caplog
):
    preds, truth = _nih_preds(synthetic_root, tmp_path / "preds.csv")
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="chexnet_pl.evaluation.stratified"):
        evaluate(compose_config("evaluate", out, f"preds={preds}", f"data.root={synthetic_root}",
                                "evaluation.bootstrap_samples=50"))  # fmt: skip
    table = pd.read_csv(out / "stratified.csv", keep_default_na=False, na_values=[""])
    assert list(table.columns) == COLUMNS
    assert (out / "stratified.png").stat().st_size > 10_000
    assert list(dict.fromkeys(table["finding"])) == class_names()[:-1]  # No Finding: not a finding
    assert set(table["covariate"]) == {"view"}
    views = truth["View Position"].str.upper()
    for row in table[table["finding"] == "Effusion"].itertuples():
        assert row.n == int((views == row.stratum).sum())
        assert row.n_pos == int(truth.loc[views == row.stratum, "Effusion"].sum())
    compared = table[table["note"].isna()]
    assert len(compared) and compared["delong_p"].between(0, 1).all()
    assert set(compared["compared_with"]) <= {"PA", "AP"}
    said = caplog.text
    assert "(Pneumothorax, Support Devices) skipped: the data has no Support Devices" in said
    assert "(each finding, manufacturer) skipped: the data has no manufacturer" in said
    # ...as an SVG with evaluation.figure_format; none with evaluation.stratify=[]
    evaluate(compose_config("evaluate", tmp_path / "svg", f"preds={preds}",
                            f"data.root={synthetic_root}", "evaluation.bootstrap_samples=0",
                            "evaluation.figure_format=svg", "evaluation.subgroups=[]"))  # fmt: skip
    assert (tmp_path / "svg" / "stratified.svg").is_file()
    evaluate(compose_config("evaluate", tmp_path / "none", f"preds={preds}",
                            f"data.root={synthetic_root}", "evaluation.bootstrap_samples=0",
                            "evaluation.stratify=[]", "evaluation.plots=false"))  # fmt: skip
    assert not (tmp_path / "none" / "stratified.csv").exists()


def test_pairs_asked_for_on_the_command_line_and_through_the_api(synthetic_root, tmp_path):
    preds, truth = _nih_preds(synthetic_root, tmp_path / "preds.csv", seed=1)
    out = tmp_path / "out"
    evaluate(compose_config(
        "evaluate", out, f"preds={preds}", f"data.root={synthetic_root}",
        "evaluation.bootstrap_samples=20", "evaluation.plots=false",
        "evaluation.stratify=[[Effusion,Patient Gender],[Mass,age],[Hernia,Effusion]]",
    ))  # fmt: skip
    table = pd.read_csv(out / "stratified.csv", keep_default_na=False, na_values=[""])
    assert list(dict.fromkeys(zip(table["finding"], table["covariate"], strict=True))) == [
        ("Effusion", "Patient Gender"), ("Mass", "age"), ("Hernia", "Effusion")
    ]  # fmt: skip
    assert set(table.loc[table["covariate"] == "Patient Gender", "stratum"]) == {"F", "M"}
    effusion = table[table["covariate"] == "Effusion"].set_index("stratum")  # a label covariate
    assert effusion.at["positive", "n"] == int(truth["Effusion"].sum())
    evaluation = chexnet_pl.evaluate(preds, synthetic_root, bootstrap_samples=20, plots=False,
                                     stratify=[["Effusion", "view"]])  # fmt: skip
    assert list(evaluation.stratified.columns) == COLUMNS
    assert set(evaluation.stratified["covariate"]) == {"view"}
    assert "stratified.csv" in evaluation.files


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("view", r"evaluation.stratify='view': give auto, \[\] \(none\) or a list of"),
        ([["Pneumothorax"]], r"evaluation.stratify\[0\]=\['Pneumothorax'\] is not a \[finding, "),
        ([["Edema", "Edema"]], r"a finding cannot be its own covariate"),
        ([["Edema", ""]], r"is not a \[finding, covariate\] pair of two names"),
    ],
)
def test_malformed_settings_are_refused_before_any_work(value, message):
    with pytest.raises(ConfigError, match=message):
        EvaluationSettings.from_config({"stratify": value})


@pytest.mark.slow  # over ~8 s: the slow tier keeps make test-fast under 3 min
def test_a_pair_the_data_cannot_give_is_one_error_naming_each(synthetic_root, tmp_path):
    preds, _ = _nih_preds(synthetic_root, tmp_path / "preds.csv")
    cfg = compose_config(
        "evaluate", tmp_path / "out", f"preds={preds}", f"data.root={synthetic_root}",
        "evaluation.bootstrap_samples=0",
        "evaluation.stratify=[[Pneumothorax,Support Devices],[Pneumothorx,view]]",
    )  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        evaluate(cfg)
    text = str(caught.value)
    assert "covariate 'Support Devices' (paired with Pneumothorax) is not in this data" in text
    assert "'view'" in text and "evaluation.stratify=[] for no audit" in text
    assert (
        "finding 'Pneumothorx' is not one this evaluation scores; did you mean Pneumothorax?"
        in text
    )


@pytest.mark.slow  # over ~8 s: the slow tier keeps make test-fast under 3 min
def test_chexnet_evaluate_on_chexpert_audits_pneumothorax_by_support_devices(
    chexpert_root, tmp_path
):
    """``preds= data=chexpert``: the default pair through the command, the strata as the real
    rows' Support Devices values read (blank: negative; uncertain: unknown)."""
    table = pd.read_csv(chexpert_root / "CheXpert-v1.0-small" / "train.csv")
    table = table[table["Frontal/Lateral"] == "Frontal"]
    names = ordered_labels(True)
    scores = np.random.default_rng(0).random((len(table), len(names)))
    preds = pd.DataFrame(scores, columns=[f"prob_{n}" for n in names])
    preds.insert(0, IMAGE, table["Path"].to_numpy())
    preds.to_csv(tmp_path / "preds.csv", index=False)
    out = tmp_path / "out"
    evaluate(compose_config("evaluate", out, f"preds={tmp_path / 'preds.csv'}", "data=chexpert",
                            f"data.root={chexpert_root}", "evaluation.bootstrap_samples=20",
                            "evaluation.subgroups=[]"))  # fmt: skip
    result = pd.read_csv(out / "stratified.csv", keep_default_na=False, na_values=[""])
    assert set(zip(result["finding"], result["covariate"], strict=True)) == {
        ("Pneumothorax", "Support Devices")
    }
    assert (out / "stratified.png").is_file()
    devices = table["Support Devices"].to_numpy()
    known = (
        table["Pneumothorax"].to_numpy() != -1
    )  # U-Ignore: an uncertain pneumothorax is unscored
    expected = {
        "positive": int((known & (devices == 1)).sum()),
        "negative": int((known & ((devices == 0) | np.isnan(devices))).sum()),
        "unknown": int((known & (devices == -1)).sum()),
    }
    assert dict(zip(result["stratum"], result["n"], strict=True)) == {
        k: v for k, v in expected.items() if v
    }


def test_the_command_refuses_a_malformed_pair_before_reading_anything(tmp_path):
    """Through Hydra's composition of the shipped config: no predictions file is even read."""
    cfg = compose_config("evaluate", tmp_path / "out", f"preds={tmp_path / 'absent.csv'}",
                         f"data.root={tmp_path}", "evaluation.stratify=[[Pneumothorax]]")  # fmt: skip
    with pytest.raises(ConfigError, match=r"evaluation.stratify\[0\]=\['Pneumothorax'\] is not a"):
        evaluate(cfg)
