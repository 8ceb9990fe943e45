"""The out-of-distribution flag (chexnet_pl.ood): the Mahalanobis fit and its threshold against
an independent numpy computation, the state through checkpoints and export sidecars, and the
flag as chexnet-predict, the API, the service and chexnet-evaluate report it."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_config, random_checkpoint
from PIL import Image
from scipy.stats import binomtest

import chexnet_pl
from chexnet_pl.checkpoints.file_io import read_checkpoint
from chexnet_pl.errors import ConfigError, WeightsError
from chexnet_pl.ood import (
    CHECKPOINT_KEY,
    OodSettings,
    OodState,
    add_to_checkpoint,
    fit_checkpoint,
    fit_state,
    fitted_path,
)


def _numpy_ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Ledoit & Wolf (2004), written out: shrink S towards mu*I by min(b², d²)/d²."""
    n, d = x.shape
    mean = x.mean(0)
    c = x - mean
    sample = c.T @ c / n
    mu = np.trace(sample) / d
    delta2 = np.sum((sample - mu * np.eye(d)) ** 2)
    beta2 = sum(np.sum((np.outer(row, row) - sample) ** 2) for row in c) / n**2
    shrinkage = min(beta2, delta2) / delta2
    return mean, (1 - shrinkage) * sample + shrinkage * mu * np.eye(d), shrinkage


def test_the_fit_and_threshold_are_the_numpy_computation():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(40, 12)) @ rng.normal(size=(12, 12)) + 3.0
    val = rng.normal(size=(25, 12)) @ rng.normal(size=(12, 12)) + 3.0
    state = fit_state(train, val, 0.1)
    mean, covariance, shrinkage = _numpy_ledoit_wolf(train)
    precision = np.linalg.inv(covariance)
    assert state.shrinkage == pytest.approx(shrinkage, rel=1e-9)
    np.testing.assert_allclose(state.mean, mean, rtol=1e-6)
    np.testing.assert_allclose(state.precision, precision, rtol=1e-5, atol=1e-7)
    expected = np.sqrt(np.einsum("nd,de,ne->n", val - mean, precision, val - mean))
    np.testing.assert_allclose(state.scores(val), expected, rtol=1e-5)
    assert state.threshold == pytest.approx(np.sort(expected)[math.ceil(0.9 * 25) - 1], rel=1e-5)
    assert state.n_images == 40 and state.n_val == 25


def test_fewer_images_than_features_still_give_a_finite_flag():
    rng = np.random.default_rng(1)
    state = fit_state(rng.normal(size=(10, 64)), rng.normal(size=(5, 64)), 0.05)
    assert 0 < state.shrinkage <= 1 and np.isfinite(state.precision).all()
    assert np.isfinite(state.threshold)


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.2])
def test_the_threshold_gives_the_stated_false_alarm_rate(rate):
    """On validation at most the stated share is flagged; on fresh images of the same
    distribution the share flagged is within the rate's 99 % binomial interval."""
    rng = np.random.default_rng(2)
    mix = rng.normal(size=(8, 8))
    train, val, fresh = (rng.normal(size=(n, 8)) @ mix for n in (2000, 2000, 4000))
    state = fit_state(train, val, rate)
    assert state.val_flag_rate <= rate
    assert state.val_flag_rate > rate - 2 / len(val)
    flagged = int(np.sum(~state.in_distribution(state.scores(fresh))))
    assert binomtest(flagged, len(fresh), rate).pvalue > 0.01, (flagged, len(fresh), rate)


def test_settings_are_judged():
    assert OodSettings.from_config(None) == OodSettings()
    with pytest.raises(ConfigError, match=r"ood.false_alarm_rate=1.5 is out of range"):
        OodSettings.from_config({"false_alarm_rate": 1.5})
    with pytest.raises(
        ConfigError, match=r"ood.max_imgs is not a setting; did you mean ood.max_images"
    ):
        OodSettings.from_config({"max_imgs": 10})


def test_the_shipped_configs_carry_the_ood_section(tmp_path):
    from chexnet_pl.command_help import command_help
    from chexnet_pl.config_defaults import config_dir

    for name in ("train", "evaluate"):
        cfg = compose_config(name, tmp_path, *(["ckpt=x.ckpt"] if name == "evaluate" else []))
        assert dict(cfg.ood) == {"enabled": True, "max_images": 10000, "false_alarm_rate": 0.05,
                                 "fit": False}  # fmt: skip
    text = command_help("train", "chexnet_pl.train", config_dir(), "train")
    assert "ood.false_alarm_rate=0.05" in text and "ood.* (conf/ood/default.yaml)" in text


def test_a_bad_ood_setting_is_refused_by_the_preflight_check(tmp_path, synthetic_root):
    from chexnet_pl.settings import check_train_config

    cfg = compose_config("train", tmp_path, "experiment=demo", f"data.root={synthetic_root}",
                         "data.synthetic=null", "ood.max_images=1")  # fmt: skip
    with pytest.raises(ConfigError, match=r"ood.max_images=1 is out of range"):
        check_train_config(cfg)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, synthetic_root) -> Path:
    """A random 64-px DenseNet-121 checkpoint on the synthetic data, its flag fitted (inference
    only: nothing trains)."""
    folder = tmp_path_factory.mktemp("ood")
    ckpt = random_checkpoint(folder / "best.ckpt", root=str(synthetic_root), synthetic=None)
    return fit_checkpoint(ckpt, max_images=60, false_alarm_rate=0.1)


def _photo(folder: Path) -> Path:
    from matplotlib.cbook import get_sample_data

    path = folder / "grace_hopper.png"
    Image.open(get_sample_data("grace_hopper.jpg", asfileobj=False)).save(path)
    return path


def test_the_state_round_trips_through_the_checkpoint(fitted):
    stored = torch.load(fitted, map_location="cpu", weights_only=True)
    assert set(stored[CHECKPOINT_KEY]) >= {"method", "mean", "precision", "threshold",
                                           "false_alarm_rate", "n_images"}  # fmt: skip
    state = OodState.from_stored(read_checkpoint(fitted)[CHECKPOINT_KEY], fitted)
    assert state.n_images == 60 and state.false_alarm_rate == 0.1
    assert state.mean.shape == (1024,) and state.precision.shape == (1024, 1024)
    assert fitted.name == "best.ood.ckpt" and (fitted.parent / "best.ckpt").is_file()
    assert CHECKPOINT_KEY not in read_checkpoint(fitted.parent / "best.ckpt")


def test_fitting_never_overwrites_a_file(fitted):
    with pytest.raises(ConfigError, match=r"best.ood.ckpt exists; .* never over one"):
        fit_checkpoint(fitted.parent / "best.ckpt")
    assert fitted_path(fitted.parent / "best.ckpt") == fitted


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda s: s.update(mean=torch.zeros(3)),
            r"precision has shape \(1024, 1024\), not \(3, 3\)",
        ),
        (lambda s: s["precision"].__setitem__((0, 0), float("nan")), "NaN or infinite"),
        (lambda s: s.update(threshold=float("nan")), "threshold=nan is not finite"),
        (lambda s: s.update(method="knn"), "method 'knn'"),
        (lambda s: s.update(precision=[1, 2]), r"precision has shape \(2,\)"),
    ],
)
def test_a_bad_state_is_refused_naming_the_file(fitted, tmp_path, change, message):
    stored = read_checkpoint(fitted)
    change(stored[CHECKPOINT_KEY])
    bad = tmp_path / "bad.ckpt"
    torch.save(stored, bad)
    with pytest.raises(
        WeightsError, match=rf"{bad}: its OOD state \('ood'\) is unusable: .*{message}"
    ):
        chexnet_pl.load(bad)


def test_api_predict_reports_the_flag(fitted, synthetic_root, tmp_path, caplog):
    model = chexnet_pl.load(fitted)
    xrays = sorted((synthetic_root / "images").glob("*.png"))[:4]
    with caplog.at_level(logging.WARNING, logger="chexnet_pl.ood"):
        table = model.predict([*xrays, _photo(tmp_path)])
    assert list(table.columns[-2:]) == ["ood_score", "in_distribution"]
    expected = model.ood.scores(model.features([*xrays, _photo(tmp_path)]))
    np.testing.assert_allclose(table["ood_score"], expected, rtol=1e-5)
    assert (table["in_distribution"] == (table["ood_score"] <= model.ood.threshold)).all()
    flagged = table.loc[~table["in_distribution"].astype(bool), "image"].tolist()
    assert len([r for r in caplog.records if "out of distribution" in r.message]) == len(flagged)


def test_without_a_state_the_columns_are_empty_and_one_line_says_how(tmp_path, synthetic_root,
                                                                      caplog):  # fmt: skip
    ckpt = random_checkpoint(tmp_path / "plain.ckpt", root=str(synthetic_root))
    with caplog.at_level(logging.INFO):
        model = chexnet_pl.load(ckpt)
        table = model.predict(sorted((synthetic_root / "images").glob("*.png"))[:2])
    assert table["ood_score"].isna().all() and table["in_distribution"].isna().all()
    from chexnet_pl.predict import predict

    image = sorted((synthetic_root / "images").glob("*.png"))[0]
    out = predict(compose_config("predict", tmp_path / "p", f"ckpt={ckpt}", f"image={image}"))
    assert "ood_score" not in pd.read_csv(out / "predictions.csv")  # its layout as before
    assert any(
        "has no OOD flag" in r.message and "ood.fit=true" in r.message for r in caplog.records
    )


@pytest.mark.slow  # over ~3 s: the slow tier keeps make test-fast under 3 min
def test_chexnet_predict_writes_the_columns(fitted, synthetic_root, tmp_path):
    from chexnet_pl.predict import predict

    images = tmp_path / "in"
    images.mkdir()
    for path in sorted((synthetic_root / "images").glob("*.png"))[:2]:
        (images / path.name).write_bytes(path.read_bytes())
    _photo(images)
    cfg = compose_config("predict", tmp_path / "out", f"ckpt={fitted}", f"images={images}",
                         "backend=torch")  # fmt: skip
    out = predict(cfg)
    table = pd.read_csv(out / "predictions.csv")
    api = chexnet_pl.load(fitted).predict(sorted(images.iterdir()))
    np.testing.assert_allclose(
        table.sort_values("Image Index")["ood_score"], api.sort_values("image")["ood_score"],
        rtol=1e-4,
    )  # fmt: skip
    assert table["in_distribution"].dtype == bool


@pytest.mark.slow  # an ONNX export or a full-size DICOM root: kept out of make test-fast
def test_the_onnx_export_carries_the_flag(fitted, synthetic_root, tmp_path):
    from chexnet_pl.serving.export import export_checkpoint

    out = export_checkpoint(fitted, "onnx", out=tmp_path / "m.onnx", cams=True)
    card = json.loads((tmp_path / "m.onnx.json").read_text())
    assert card["ood"]["method"] == "mahalanobis"
    assert card["ood"]["precision"]["shape"] == [1024, 1024]
    on_onnx = chexnet_pl.load(out)
    on_torch = chexnet_pl.load(fitted)
    assert on_onnx.ood.threshold == pytest.approx(on_torch.ood.threshold, rel=1e-6)
    images = sorted((synthetic_root / "images").glob("*.png"))[:3]
    a, b = on_onnx.predict(images), on_torch.predict(images)
    np.testing.assert_allclose(a["ood_score"], b["ood_score"], rtol=1e-3)
    assert (a["in_distribution"] == b["in_distribution"]).all()


@pytest.mark.slow  # over ~5 s: the slow tier keeps make test-fast under 3 min
def test_the_safetensors_export_carries_the_flag(fitted, synthetic_root, tmp_path):
    """The safetensors export is the whole network again: its sidecar carries the flag, and
    ``chexnet_pl.load`` of it flags as the checkpoint does (and a TorchScript export, which has
    no features output, carries none)."""
    from chexnet_pl.serving.export import export_checkpoint

    out = export_checkpoint(fitted, "safetensors", out=tmp_path / "m.safetensors")
    card = json.loads((tmp_path / "m.safetensors.json").read_text())
    assert card["ood"]["method"] == "mahalanobis"
    exported, checkpoint = chexnet_pl.load(out), chexnet_pl.load(fitted)
    assert exported.ood.threshold == pytest.approx(checkpoint.ood.threshold, rel=1e-6)
    images = [*sorted((synthetic_root / "images").glob("*.png"))[:2], _photo(tmp_path)]
    a, b = exported.predict(images), checkpoint.predict(images)
    np.testing.assert_allclose(a["ood_score"], b["ood_score"], rtol=1e-5)
    assert a["in_distribution"].tolist() == b["in_distribution"].tolist()
    export_checkpoint(fitted, "torchscript", out=tmp_path / "m.pt")
    assert json.loads((tmp_path / "m.pt.json").read_text())["ood"] is None


def test_the_service_reports_the_flag_per_image(fitted, synthetic_root, tmp_path):
    import requests
    from test_serve import app_on_loopback

    from chexnet_pl.serving.app import Limits, create_app, page_html
    from chexnet_pl.serving.backends import load_backend
    from chexnet_pl.serving.predictor import Predictor

    backend, card = load_backend(fitted, "torch")
    assert card["ood"]["threshold"] == pytest.approx(chexnet_pl.load(fitted).ood.threshold)
    predictor = Predictor(backend, card)
    try:
        with app_on_loopback(create_app(predictor, Limits(2**24, 10**8))) as url:
            xray = sorted((synthetic_root / "images").glob("*.png"))[0]
            answer = requests.post(f"{url}/predict", data=xray.read_bytes(), timeout=60,
                                   headers={"content-type": "image/png"}).json()  # fmt: skip
            expected = chexnet_pl.load(fitted).predict([xray])
            assert answer["ood"]["ood_score"] == pytest.approx(expected["ood_score"][0], rel=1e-4)
            assert answer["ood"]["in_distribution"] == bool(expected["in_distribution"][0])
            assert (answer["ood"]["warning"] is None) == answer["ood"]["in_distribution"]
    finally:
        predictor.close()
    assert 'id="ood-warning"' in page_html() and "ood.warning" in page_html()


def test_add_to_checkpoint_replaces_the_key(fitted, tmp_path):
    state = OodState.from_stored(read_checkpoint(fitted)[CHECKPOINT_KEY], fitted)
    changed = OodState(state.mean, state.precision, 7.0, 0.2, 3, 2, 0.5, 0.0)
    out = add_to_checkpoint(fitted, changed, tmp_path / "changed.ckpt")
    assert chexnet_pl.load(out).ood.threshold == 7.0


@pytest.mark.slow
def test_a_model_trained_on_the_nih_sample_flags_a_photograph(nih_sample, tmp_path):
    """Done-when of issue 34 item 1: trained on the real NIH sample, best.ckpt carries the flag;
    a photograph is flagged by chexnet-predict, the API and the service; the validation X-rays'
    false-alarm rate is within the stated rate's binomial interval; chexnet-evaluate reports the
    flag rate per split."""
    import requests
    from test_serve import app_on_loopback

    from chexnet_pl.evaluate import evaluate
    from chexnet_pl.predict import predict
    from chexnet_pl.serving.app import Limits, create_app
    from chexnet_pl.serving.backends import load_backend
    from chexnet_pl.serving.predictor import Predictor

    run = chexnet_pl.train([
        "experiment=demo", f"data.root={nih_sample}", "data.synthetic=null",
        "data.image_size=64", "data.batch_size=8", "data.num_workers=0", "trainer.max_epochs=1",
        "+trainer.limit_train_batches=3", "trainer.precision=32-true",
        "trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
        "evaluation.bootstrap_samples=20", "callbacks.visualization.n_images=0",
        f"hydra.run.dir={tmp_path / 'run'}",
    ])  # fmt: skip
    best = run / "checkpoints" / "best.ckpt"
    model = chexnet_pl.load(best)
    assert model.ood is not None and model.ood.false_alarm_rate == 0.05
    # the false-alarm rate on validation X-rays, within the stated rate's binomial interval
    flagged = round(model.ood.val_flag_rate * model.ood.n_val)
    assert binomtest(flagged, model.ood.n_val, 0.05).pvalue > 0.05, (flagged, model.ood.n_val)
    photo = _photo(tmp_path)
    assert not bool(model.predict([photo])["in_distribution"][0])  # the API
    cfg = compose_config("predict", tmp_path / "pred", f"ckpt={best}", f"image={photo}")
    table = pd.read_csv(predict(cfg) / "predictions.csv")  # chexnet-predict
    assert table["in_distribution"].tolist() == [False]
    backend, card = load_backend(best, "torch")
    predictor = Predictor(backend, card)
    try:
        with app_on_loopback(create_app(predictor, Limits(2**24, 10**8))) as url:
            answer = requests.post(f"{url}/predict", data=photo.read_bytes(), timeout=120,
                                   headers={"content-type": "image/png"}).json()  # fmt: skip
    finally:
        predictor.close()
    assert (
        answer["ood"]["in_distribution"] is False
        and "out of distribution" in answer["ood"]["warning"]
    )
    metrics = evaluate(compose_config("evaluate", tmp_path / "eval", f"ckpt={best}",
                                      "evaluation.bootstrap_samples=0"))  # fmt: skip
    report = pd.read_csv(tmp_path / "eval" / "ood.csv")
    assert list(report["split"]) == ["test", "val"]
    assert metrics["val/ood_flag_rate"] == pytest.approx(model.ood.val_flag_rate)


@pytest.mark.slow  # an ONNX export or a full-size DICOM root: kept out of make test-fast
def test_chexnet_predict_on_onnx_runtime_flags_from_the_sidecar(fitted, synthetic_root, tmp_path):
    from chexnet_pl.predict import predict
    from chexnet_pl.serving.export import export_checkpoint

    ckpt = tmp_path / "beside" / "best.ood.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(fitted.read_bytes())
    onnx = export_checkpoint(ckpt, "onnx", cams=True)  # best.ood.onnx beside it: backend=auto
    assert onnx == ckpt.with_suffix(".onnx")
    image = sorted((synthetic_root / "images").glob("*.png"))[0]
    tables = {}
    for backend in ("onnx", "torch"):
        cfg = compose_config("predict", tmp_path / backend, f"ckpt={ckpt}", f"image={image}",
                             f"backend={backend}")  # fmt: skip
        tables[backend] = pd.read_csv(predict(cfg) / "predictions.csv")
    np.testing.assert_allclose(tables["onnx"]["ood_score"], tables["torch"]["ood_score"], rtol=1e-3)
