"""Calibration: ECE (equal width / equal mass) against direct computation, temperature and Platt
scaling recovering known miscalibration, the calibration file, evaluation of a checkpoint with
calibrate=temperature (report line, files, stored beside its predictions) and predict with it."""

from __future__ import annotations

import json
import logging
import subprocess

import numpy as np
import pandas as pd
import pytest
from conftest import compose_config, random_checkpoint
from PIL import Image

from chexnet_pl.data.nih_table import FINDINGS, class_names
from chexnet_pl.errors import ConfigError, DataError
from chexnet_pl.evaluate import evaluate
from chexnet_pl.evaluation.calibration import Calibration, fit_calibration
from chexnet_pl.evaluation.calibration.report import calibration_table, equal_mass_ece
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


@pytest.mark.slow  # over ~8 s: the slow tier keeps make test-fast under 3 min
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


# -- calibration files that must not be used (issue 23) -------------------------------------------


def write_calibration(path, method="temperature", classes=None, **changes) -> object:
    """A calibration.json as an evaluation writes it for every class of the model, with
    ``changes`` ({class: {key: value}}) written over it."""
    names = classes or class_names()
    calibration = Calibration(method, names, np.full(len(names), 0.8), np.zeros(len(names)))
    data = calibration.to_json()
    for name, entry in changes.items():
        data["classes"].setdefault(name, {}).update(entry)
    path.write_text(json.dumps(data))  # NaN and Infinity as Python's json writes them
    return path


BAD_CALIBRATIONS = {
    "nan_slope": ({"Mass": {"slope": float("nan")}}, r"class 'Mass' has slope nan, not a finite"),
    "nan_intercept": (
        {"Edema": {"intercept": float("nan")}},
        r"class 'Edema' has intercept nan, not a finite",
    ),
    "infinite_temperature": (
        {"Mass": {"temperature": float("inf")}},
        r"class 'Mass' has temperature inf, not a finite",
    ),
    "zero_temperature": (
        {"Mass": {"temperature": 0.0, "slope": 1.0}},
        r"class 'Mass' has temperature 0.0.*needs a positive temperature",
    ),
    "negative_temperature": (
        {"Hernia": {"temperature": -2.0, "slope": -0.5}},
        r"class 'Hernia' has temperature -2.0, slope -0.5.*needs a positive temperature",
    ),
    "text_slope": ({"Mass": {"slope": "0.8x"}}, r"class 'Mass' has slope '0.8x', not a finite"),
    # issue 29: a method whose fields disagree (1.0 was applied, tables said "calibrated")
    "temperature_disagrees_with_slope": (
        {"Mass": {"temperature": 4.0, "slope": 1.0}},
        r"class 'Mass' has temperature 4 but slope 1 \(that is temperature 1\): the method's "
        r"fields disagree",
    ),
    "unknown_class": (
        {"Covid": {"temperature": 1.0, "slope": 1.0, "intercept": 0.0}},
        r"has classes this model does not output: \['Covid'\]",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CALIBRATIONS))
def test_bad_calibration_files_are_refused_when_read(case, tmp_path):
    changes, message = BAD_CALIBRATIONS[case]
    path = write_calibration(tmp_path / f"{case}.json", **changes)
    with pytest.raises(DataError, match=f"{case}.json.*{message}|{message}.*{case}.json"):
        Calibration.read(path, class_names())


def test_a_calibration_missing_classes_or_of_another_format_is_refused(tmp_path):
    short = write_calibration(tmp_path / "short.json", classes=["Mass", "Edema"])
    with pytest.raises(DataError, match=r"short.json\) has no parameters for \['Atelectasis'"):
        Calibration.read(short, class_names())
    other = json.loads(short.read_text()) | {"format": "someone.else/2"}
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(DataError, match="other.json: format 'someone.else/2'"):
        Calibration.read(tmp_path / "other.json")
    platt = write_calibration(tmp_path / "platt.json", "platt", Mass={"slope": -0.4})
    assert Calibration.read(platt, class_names()).slope[9] == -0.4  # a Platt slope may reverse
    stray = write_calibration(tmp_path / "stray.json", "platt", Mass={"temperature": 4.0})
    with pytest.raises(DataError, match=r"stray.json: method 'platt', but class\(es\) \['Mass'\] "
                       r"have a temperature"):  # fmt: skip
        Calibration.read(stray, class_names())


def test_a_temperature_fit_never_writes_a_non_positive_temperature():
    """Scores that rank cases backwards fit a negative slope, which no temperature gives: the
    class is left uncalibrated, so every file an evaluation writes can be read back."""
    rng = np.random.default_rng(0)
    labels = (rng.random((400, 2)) < 0.3).astype(np.float32)
    scores = np.where(labels > 0.5, 0.2, 0.8) + rng.normal(0, 0.05, labels.shape)
    fitted = fit_calibration(np.clip(scores, 0.01, 0.99), labels, ["Mass", "Edema"], "temperature")
    assert (fitted.slope == 1.0).all()
    Calibration.from_json(fitted.to_json(), None, ["Mass", "Edema"])


@pytest.mark.slow
def test_predict_and_serve_refuse_a_nan_calibration_in_one_line(tmp_path):
    """``chexnet-predict`` and ``chexnet-serve`` with a calibration.json holding NaN, as users run
    them: exit 2, one error line naming the file and the value, nothing written, no server."""
    from conftest import console_script

    ckpt = random_checkpoint(tmp_path / "model.ckpt", image_size=32)
    bad = write_calibration(tmp_path / "calibration.json", Mass={"intercept": float("nan")})
    image = tmp_path / "xray.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(image)
    out = tmp_path / "out"
    commands = {
        "predict": [f"image={image}", f"out={out}"],
        "serve": [f"port={_free_port()}"],
    }
    for name, extra in commands.items():
        result = subprocess.run(
            [*console_script(name), f"ckpt={ckpt}", f"calibration={bad}", *extra,
             f"hydra.run.dir={tmp_path / name}"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        output = result.stdout + result.stderr
        assert result.returncode == 2, (name, output[-3000:])
        errors = [line for line in output.splitlines() if "[ERROR]" in line]
        assert len(errors) == 1, output[-3000:]
        assert f"{bad}: class 'Mass' has intercept nan, not a finite number" in errors[0]
        assert "Traceback" not in output and "Uvicorn running" not in output
    assert not out.exists()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_service_answers_calibrated_probabilities(tmp_path):
    """``serve calibration=``: the model card carries the parameters, thresholds from aucs.csv are
    mapped through them, and every answer's probabilities are the calibrated ones."""
    from chexnet_pl.serving.backends import load_backend
    from chexnet_pl.serving.predictor import Predictor

    ckpt = random_checkpoint(tmp_path / "model.ckpt", "resnet18", image_size=32)
    names = class_names()
    pd.DataFrame({"auroc": 0.8, "threshold": 0.3}, index=pd.Index(names, name="class")).to_csv(
        tmp_path / "aucs.csv"
    )
    path = write_calibration(tmp_path / "calibration.json", "platt", Mass={"intercept": 0.5})
    raw_backend, _ = load_backend(ckpt, "torch")
    backend, card = load_backend(ckpt, "torch", calibration=path)
    assert card["calibration"]["method"] == "platt" and card["calibration"]["file"] == path.name
    calibration = Calibration.read(path, names)
    expected_thresholds = calibration.apply(np.full((1, len(names)), 0.3), names)[0]
    np.testing.assert_allclose(list(card["thresholds"].values()), expected_thresholds)
    assert "(mapped through calibration.json)" in card["thresholds_source"]
    image = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    raw = raw_backend.run(image[None, None]).probabilities
    predictor = Predictor(backend, card)
    got = predictor.submit(image).result(60).probabilities
    predictor.close()
    np.testing.assert_allclose(got, calibration.apply(raw, names)[0], atol=1e-6)
    assert predictor.calibration_label == "platt (calibration.json)"
    with pytest.raises(DataError, match="has classes this model does not output"):
        load_backend(ckpt, "torch", calibration=write_calibration(
            tmp_path / "x.json", Covid={"temperature": 1.0, "slope": 1.0, "intercept": 0.0}))  # fmt: skip
