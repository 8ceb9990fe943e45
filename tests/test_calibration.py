"""Calibration: ECE (equal width / equal mass) against direct computation, temperature and Platt
scaling recovering known miscalibration, the calibration file, evaluation of a checkpoint with
calibrate=temperature (report line, files, stored beside its predictions) and predict with it."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from conftest import compose_config, random_checkpoint
from PIL import Image

from chexnet_pl.errors import ConfigError, DataError
from chexnet_pl.evaluate import evaluate
from chexnet_pl.evaluation.calibration import (
    Calibration,
    calibration_table,
    equal_mass_ece,
    fit_calibration,
)
from chexnet_pl.labels import FINDINGS, class_names
from chexnet_pl.predict import predict

compose_task = compose_config


def slow_ece(p: np.ndarray, y: np.ndarray, edges: list[list[int]]) -> float:
    return sum(len(b) * abs(y[b].mean() - p[b].mean()) for b in edges if len(b)) / len(p)


def test_ece_equals_a_direct_computation_and_separates_good_from_bad():
    rng = np.random.default_rng(0)
    p = rng.random(5000)
    y = (rng.random(5000) < p).astype(float)  # calibrated by construction
    width_bins = [[i for i in range(len(p)) if min(int(p[i] * 15), 14) == k] for k in range(15)]
    order = np.argsort(p, kind="stable")
    mass_bins = [list(chunk) for chunk in np.array_split(order, 15)]
    table = calibration_table(np.column_stack([p] * 15), np.column_stack([y] * 15), class_names())
    assert table.at["Mass", "ece_equal_width"] == pytest.approx(
        slow_ece(p, y, width_bins), abs=1e-5
    )
    assert table.at["Mass", "ece_equal_mass"] == pytest.approx(slow_ece(p, y, mass_bins), abs=1e-12)
    assert table.at["Mass", "brier"] == pytest.approx(np.mean((p - y) ** 2), abs=1e-12)
    assert table.at["Mass", "ece_equal_mass"] < 0.03
    overconfident = np.clip(np.where(p > 0.5, p + 0.3, p - 0.3), 0, 1)
    assert equal_mass_ece(overconfident, y > 0.5, 15) > 0.15
    assert list(table.index) == [*FINDINGS, "Mean (14 findings)", "No Finding"]


@pytest.mark.parametrize(
    ("method", "slope", "shift"), [("temperature", 3.0, 0.0), ("platt", 2.0, 1.5)]
)
def test_scaling_recovers_a_known_miscalibration(method, slope, shift):
    """True probability σ(z); the model reports σ(slope·z + shift). The fit must undo it."""
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1.5, (20000, 15))
    y = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(float)
    reported = 1 / (1 + np.exp(-(slope * z + shift)))
    calibration = fit_calibration(reported[:10000], y[:10000], class_names(), method)
    # 15 independent fits on 10,000 cases each: each close, their mean closer.
    assert np.allclose(calibration.slope, 1 / slope, rtol=0.1)
    assert np.allclose(calibration.intercept, -shift / slope, atol=0.12)
    assert calibration.slope.mean() == pytest.approx(1 / slope, rel=0.03)
    assert calibration.intercept.mean() == pytest.approx(-shift / slope, abs=0.03)
    before = calibration_table(reported[10000:], y[10000:], class_names())
    after = calibration_table(
        calibration.apply(reported[10000:], class_names()), y[10000:], class_names()
    )
    assert before.at["Mean (14 findings)", "ece_equal_mass"] > 0.08
    assert after.at["Mean (14 findings)", "ece_equal_mass"] < 0.02
    assert after.at["Mean (14 findings)", "brier"] < before.at["Mean (14 findings)", "brier"]


def test_calibration_file_round_trip_and_errors(tmp_path):
    calibration = Calibration(
        "platt", ["Mass", "Edema"], np.array([0.5, 2.0]), np.array([1.0, -1.0])
    )
    path = calibration.save(tmp_path / "calibration.json")
    read = Calibration.read(path)
    assert read.label == "platt (calibration.json)" and read.class_names == ["Mass", "Edema"]
    p = np.array([[0.2, 0.9]])
    z = np.log(p / (1 - p))
    expected = 1 / (1 + np.exp(-(np.array([2.0, 0.5]) * z[:, ::-1] + np.array([-1.0, 1.0]))))
    np.testing.assert_allclose(read.apply(p[:, ::-1], ["Edema", "Mass"]), expected)
    with pytest.raises(DataError, match=r"has no parameters for \['Hernia'\]"):
        read.apply(p, ["Mass", "Hernia"])
    (tmp_path / "bad.json").write_text(json.dumps({"method": "platt"}))
    with pytest.raises(DataError, match="bad.json is not a calibration file an evaluation wrote"):
        Calibration.read(tmp_path / "bad.json")
    with pytest.raises(DataError, match="calibration file not found"):
        Calibration.read(tmp_path / "nope.json")


def test_calibrate_needs_validation_predictions(synthetic_root, tmp_path):
    from chexnet_pl.data.nih_table import read_data_entry

    names = read_data_entry(synthetic_root / "Data_Entry_2017_v2020.csv")["Image Index"]
    frame = pd.DataFrame(
        np.random.default_rng(0).random((len(names), 15)),
        columns=[f"prob_{c}" for c in class_names()],
    )
    frame.insert(0, "Image Index", names)
    frame.to_csv(tmp_path / "preds.csv", index=False)
    cfg = compose_task("evaluate", tmp_path / "out", f"preds={tmp_path / 'preds.csv'}",
                       f"data.root={synthetic_root}", "evaluation.calibrate=platt")  # fmt: skip
    with pytest.raises(
        ConfigError,
        match=r"evaluation.calibrate=platt is fitted on validation predictions: "
        "give val_preds=preds_val.csv with preds=",
    ):
        evaluate(cfg)
    assert not (tmp_path / "out").exists()  # stopped before any work


def test_evaluate_with_temperature_then_predict_with_its_file(
    synthetic_root, nih_sample, tmp_path, caplog
):
    """The shared evaluation path (as at the end of `train`) reports calibration and subgroups;
    predict applies the stored parameters, and its tables say so."""
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    ckpt = random_checkpoint(
        tmp_path / "run" / "checkpoints" / "best.ckpt", image_size=32, root=str(synthetic_root)
    )
    with caplog.at_level(logging.INFO):
        evaluate(compose_task("evaluate", tmp_path / "eval", f"ckpt={ckpt}", "data.num_workers=0",
                              "evaluation.bootstrap_samples=50", "evaluation.calibrate=temperature"))  # fmt: skip
    out = tmp_path / "eval"
    for name in ("calibration.csv", "calibration.json", "reliability.png", "preds_calibrated.csv",
                 "subgroups.csv", "underdiagnosis.csv", "subgroups_forest.png"):  # fmt: skip
        assert (out / name).is_file(), name
    assert "after temperature scaling fitted on val" in caplog.text and "Subgroups:" in caplog.text
    stored = tmp_path / "run" / "predictions" / "best_calibration_temperature.json"
    assert json.loads(stored.read_text()) == json.loads((out / "calibration.json").read_text())
    table = pd.read_csv(out / "calibration.csv", index_col="class")
    assert {"ece_equal_mass", "ece_equal_mass_calibrated", "brier_calibrated", "slope"} <= set(
        table
    )
    aucs = pd.read_csv(out / "aucs.csv", index_col="class")
    assert aucs.at["Mass", "ece"] == pytest.approx(table.at["Mass", "ece_equal_mass"])

    image = sorted((nih_sample / "images").glob("*.png"))[0]
    small = tmp_path / "in" / image.name
    small.parent.mkdir()
    Image.open(image).convert("L").resize((128, 128)).save(small)
    raw = predict(compose_task("predict", tmp_path / "p1", f"ckpt={ckpt}", f"image={small}",
                               f"out={tmp_path / 'raw'}", "method=cam"))  # fmt: skip
    calibrated = predict(compose_task(
        "predict", tmp_path / "p2", f"ckpt={ckpt}", f"image={small}", f"out={tmp_path / 'cal'}",
        "method=cam", f"calibration={out / 'calibration.json'}", f"thresholds={out / 'aucs.csv'}",
    ))  # fmt: skip
    p_raw = pd.read_csv(raw / "predictions.csv").iloc[0]
    p_cal = pd.read_csv(calibrated / "predictions.csv").iloc[0]
    assert p_cal["calibration"] == "temperature (calibration.json)" and "calibration" not in p_raw
    calibration = Calibration.read(out / "calibration.json")
    probs = [f"prob_{c}" for c in class_names()]
    expected = calibration.apply(p_raw[probs].to_numpy(np.float64)[None], class_names())[0]
    np.testing.assert_allclose(p_cal[probs].to_numpy(np.float64), expected, atol=1e-6)
    per_image = pd.read_csv(calibrated / f"{small.stem}.csv").set_index("finding")
    assert (per_image["calibration"] == "temperature (calibration.json)").all()
    raw_threshold = aucs.at["Mass", "threshold"]
    if not np.isnan(raw_threshold):  # thresholds chosen on raw probabilities are mapped too
        mapped = calibration.apply(np.full((1, 15), raw_threshold), class_names())[0, 9]
        assert per_image.at["Mass", "threshold"] == pytest.approx(mapped, abs=1e-9)
