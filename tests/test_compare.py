"""Paired comparison of two models: DeLong's test against a slow computation from its definition,
the paired patient bootstrap, image-set checks, and the evaluate command (files and checkpoints)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import compose_config, random_checkpoint
from sklearn.metrics import roc_auc_score

from chexnet_pl.data.nih import label_index
from chexnet_pl.data.nih_table import FINDINGS, class_names, read_data_entry
from chexnet_pl.data.splits import read_name_list
from chexnet_pl.errors import DataError
from chexnet_pl.evaluate import evaluate
from chexnet_pl.evaluation.compare import (
    align_predictions,
    compare_predictions,
    delong_test,
    placement_values,
)


def compose_evaluate(output_dir: Path, *overrides: str):
    return compose_config("evaluate", output_dir, *overrides)


def slow_delong(a: np.ndarray, b: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """DeLong et al. 1988 written out: ψ for every (positive, negative) pair with explicit loops,
    structural components V10/V01, their sample covariances, z and the two-sided p-value."""
    positives = [i for i in range(len(labels)) if labels[i] == 1]
    negatives = [j for j in range(len(labels)) if labels[j] == 0]
    m, n = len(positives), len(negatives)

    def psi(x: float, y: float) -> float:
        return 1.0 if x > y else 0.5 if x == y else 0.0

    components = []
    for scores in (a, b):
        v10 = [sum(psi(scores[i], scores[j]) for j in negatives) / n for i in positives]
        v01 = [sum(psi(scores[i], scores[j]) for i in positives) / m for j in negatives]
        components.append((v10, v01))

    def cov(x: list[float], y: list[float]) -> float:
        mx, my = sum(x) / len(x), sum(y) / len(y)
        return sum((xi - mx) * (yi - my) for xi, yi in zip(x, y, strict=True)) / (len(x) - 1)

    (a10, a01), (b10, b01) = components
    var_a = cov(a10, a10) / m + cov(a01, a01) / n
    var_b = cov(b10, b10) / m + cov(b01, b01) / n
    covariance = cov(a10, b10) / m + cov(a01, b01) / n
    auc_a, auc_b = sum(a10) / m, sum(b10) / m
    z = (auc_a - auc_b) / math.sqrt(var_a + var_b - 2 * covariance)
    return auc_a - auc_b, z, math.erfc(abs(z) / math.sqrt(2))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_equals_the_definition_computed_with_loops(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(40) < 0.4).astype(int)
    a = np.round(labels * 0.3 + rng.random(40), 1)  # coarse: many ties within and across classes
    b = np.round(labels * 0.1 + 0.5 * a + 0.5 * rng.random(40), 1)
    delta, z, p = slow_delong(a, b, labels)
    result = delong_test(a, b, labels)
    assert result.auroc_a == pytest.approx(roc_auc_score(labels, a), abs=1e-12)
    assert result.auroc_a - result.auroc_b == pytest.approx(delta, abs=1e-12)
    assert result.z == pytest.approx(z, rel=1e-10)
    assert result.p_value == pytest.approx(p, rel=1e-9)
    v10, v01 = placement_values(a, labels > 0)
    assert v10.mean() == pytest.approx(v01.mean(), abs=1e-12)  # both average to the AUROC


def test_delong_edge_cases():
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    same = delong_test(scores, scores, labels)
    assert same.z == 0 and same.p_value == 1.0
    assert np.isnan(delong_test(scores, scores, np.zeros(6)).p_value)


def test_delong_variance_agrees_with_the_bootstrap_when_images_are_independent():
    """One image per patient: DeLong's variance and the paired bootstrap's agree (±20%)."""
    rng = np.random.default_rng(5)
    n = 3000
    labels = (rng.random((n, 14)) < 0.2).astype(float)
    a = labels * 0.6 + rng.normal(0, 1, labels.shape)
    b = labels * 0.5 + 0.6 * a + rng.normal(0, 0.8, labels.shape)
    names = list(FINDINGS)
    truth = pd.DataFrame(labels, columns=names, index=pd.Index([f"{i}.png" for i in range(n)]))
    truth.insert(0, "Patient ID", np.arange(n))

    def frame(scores):
        table = pd.DataFrame(1 / (1 + np.exp(-scores)), columns=[f"prob_{c}" for c in names])
        table.insert(0, "Image Index", truth.index)
        return table

    table = compare_predictions(frame(a), frame(b), truth, names, bootstrap_samples=1000)
    bootstrap_sd = (table.loc[names, "ci_high"] - table.loc[names, "ci_low"]) / (2 * 1.96)
    delong_sd = [math.sqrt(delong_test(a[:, j], b[:, j], labels[:, j]).variance) for j in range(14)]
    ratio = bootstrap_sd.to_numpy() / np.array(delong_sd)
    assert 0.8 < np.median(ratio) < 1.2, ratio
    expected = [
        roc_auc_score(labels[:, j], a[:, j]) - roc_auc_score(labels[:, j], b[:, j])
        for j in range(14)
    ]
    np.testing.assert_allclose(table.loc[names, "delta"], expected, atol=1e-12)
    # Same draws for both models: the paired interval is much narrower than unpaired ones would be.
    assert (
        (table.loc[names, "ci_low"] < table.loc[names, "delta"])
        & (table.loc[names, "delta"] < table.loc[names, "ci_high"])
    ).all()


def _write(path: Path, names: list[str], scores: np.ndarray) -> Path:
    frame = pd.DataFrame(scores, columns=[f"prob_{c}" for c in class_names()])
    frame.insert(0, "Image Index", names)
    frame.to_csv(path, index=False)
    return path


@pytest.mark.slow  # over ~3 s: the slow tier keeps make test-fast under 3 min
def test_compare_two_files_on_the_real_test_list(nih_meta, tmp_path, caplog):
    """A is better than B on Cardiomegaly only; the command finds that, and no more."""
    truth = label_index(read_data_entry(nih_meta / "Data_Entry_2017_v2020.csv.gz"))
    test = read_name_list(nih_meta / "test_list.txt")
    labels = truth.loc[test, class_names()].to_numpy()
    rng = np.random.default_rng(0)
    common = 0.3 * labels + rng.random(labels.shape) * 0.7
    a, b = common.copy(), common.copy()
    cardio = FINDINGS.index("Cardiomegaly")
    b[:, cardio] = np.clip(common[:, cardio] + rng.normal(0, 0.25, len(test)), 0, 1)  # noisier
    a, b = np.round(a, 4), np.round(b, 4)
    preds_a, preds_b = _write(tmp_path / "a.csv", test, a), _write(tmp_path / "b.csv", test, b)
    with caplog.at_level(logging.INFO):
        metrics = evaluate(
            compose_evaluate(
                tmp_path / "out", f"preds={preds_a}", f"compare={preds_b}", f"data.root={nih_meta}",
                "evaluation.bootstrap_samples=100", "evaluation.subgroups=[]", "evaluation.plots=false",
            )
        )  # fmt: skip
    assert "Paired comparison on 25,596 images of 2,797 patients" in caplog.text
    table = pd.read_csv(tmp_path / "out" / "compare.csv", index_col="class")
    expected = roc_auc_score(labels[:, cardio], a[:, cardio]) - roc_auc_score(
        labels[:, cardio], b[:, cardio]
    )
    assert table.at["Cardiomegaly", "delta"] == pytest.approx(expected, abs=1e-6)
    assert metrics["test/delta_auroc_Cardiomegaly"] == pytest.approx(expected, abs=1e-6)
    assert table.at["Cardiomegaly", "ci_low"] > 0 and table.at["Cardiomegaly", "p_delong"] < 1e-4
    same = [f for f in FINDINGS if f != "Cardiomegaly"]
    assert (table.loc[same, "delta"].abs() < 1e-6).all() and (
        table.loc[same, "p_delong"] == 1
    ).all()
    assert table.at["Mean (14 findings)", "delta"] == pytest.approx(expected / 14, abs=1e-6)
    assert np.isnan(table.at["Mean (14 findings)", "p_delong"])
    assert (tmp_path / "out" / "aucs.csv").is_file()


def test_mismatched_images_are_an_error_unless_intersection(synthetic_root, tmp_path, caplog):
    truth = label_index(read_data_entry(synthetic_root / "Data_Entry_2017_v2020.csv"))
    names = truth.index.tolist()
    rng = np.random.default_rng(1)
    a = _write(tmp_path / "a.csv", names, rng.random((len(names), 15)))
    b = _write(tmp_path / "b.csv", names[10:], rng.random((len(names) - 10, 15)))
    common = [f"preds={a}", f"compare={b}", f"data.root={synthetic_root}",
              "evaluation.bootstrap_samples=50", "evaluation.plots=false"]  # fmt: skip
    with pytest.raises(
        DataError, match=r"a.csv has 120 images, \S*b.csv 110; they share 110 \(10 only in"
    ):
        evaluate(compose_evaluate(tmp_path / "same", *common))
    with caplog.at_level(logging.INFO):
        evaluate(compose_evaluate(tmp_path / "shared", *common, "compare_on=intersection"))
    assert "Paired comparison on 110 images" in caplog.text
    assert len(pd.read_csv(tmp_path / "shared" / "compare.csv")) == 16
    with pytest.raises(DataError, match="compare_on='most'"):
        align_predictions(pd.read_csv(a), pd.read_csv(b), "most")


@pytest.mark.slow  # over ~3 s: the slow tier keeps make test-fast under 3 min
def test_compare_two_checkpoints_on_the_same_split(synthetic_root, tmp_path):
    first = random_checkpoint(tmp_path / "a.ckpt", image_size=32, seed=0, root=str(synthetic_root))
    second = random_checkpoint(tmp_path / "b.ckpt", image_size=32, seed=1, root=str(synthetic_root))
    metrics = evaluate(
        compose_evaluate(
            tmp_path / "out", f"ckpt={first}", f"compare_ckpt={second}", "data.num_workers=0",
            "evaluation.bootstrap_samples=50", "evaluation.plots=false",
        )
    )  # fmt: skip
    table = pd.read_csv(tmp_path / "out" / "compare.csv", index_col="class")
    a = pd.read_csv(tmp_path / "out" / "preds.csv")
    b = pd.read_csv(tmp_path / "out" / "preds_compare.csv")
    assert a["Image Index"].tolist() == b["Image Index"].tolist() and len(a) == 24
    assert not np.allclose(a.iloc[:, 1:], b.iloc[:, 1:])  # two different networks
    truth = label_index(read_data_entry(synthetic_root / "Data_Entry_2017_v2020.csv")).loc[
        a["Image Index"]
    ]
    for name in ("Mass", "No Finding"):
        if truth[name].nunique() == 2:
            expected = roc_auc_score(truth[name], a[f"prob_{name}"]) - roc_auc_score(
                truth[name], b[f"prob_{name}"]
            )
            assert table.at[name, "delta"] == pytest.approx(expected, abs=1e-6)
    assert "test/auroc" in metrics and any(k.startswith("test/delta_auroc_") for k in metrics)
