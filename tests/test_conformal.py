"""Conformal "refer" (evaluation.conformal): the guarantee on simulated scores, the quantile rule
against the textbook formula, evaluate's conformal.json / conformal.csv, decisions from predict,
the API, the service and an export's sidecar, and refused settings and files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from conftest import compose_config, random_checkpoint
from scipy import stats
from test_serve import app_on_loopback

import chexnet_pl
from chexnet_pl.data.nih import label_index
from chexnet_pl.data.nih_table import class_names, read_data_entry
from chexnet_pl.errors import ConfigError, DataError
from chexnet_pl.evaluate import evaluate
from chexnet_pl.evaluation.conformal import (
    CONFORMAL_FILE,
    REFER,
    ConformalState,
    class_thresholds,
    conformal_report,
    fit_conformal,
)
from chexnet_pl.evaluation.settings import EvaluationSettings

FINDINGS = ("Common", "Frequent", "Rare")
PREVALENCE = (0.5, 0.25, 0.08)


def simulated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images, three findings: labels at ``PREVALENCE``, scores Beta(4, 2) for positives
    and Beta(2, 4) for negatives (overlapping: some images must be referred)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(FINDINGS))) < np.array(PREVALENCE)).astype(np.float64)
    scores = np.where(labels > 0.5, rng.beta(4, 2, labels.shape), rng.beta(2, 4, labels.shape))
    return scores, labels


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_error_per_true_class_is_alpha_on_20000_simulated_images(alpha):
    """Calibrated on one half, tested on the other: each finding's error per true class is
    within the 99 % interval of alpha. The error count of ``n`` test images of a class, at the
    threshold of ``n_cal`` calibration images, is binomial at a miss rate that is itself
    Beta(n_cal + 1 - k, k) (the k-th order statistic): BetaBinomial, whose mean is
    (n_cal + 1 - k)/(n_cal + 1) <= alpha. A plain Binomial(n, alpha) interval leaves out the
    calibration draw and is too narrow for this guarantee (it is reported beside, for scale)."""
    scores, labels = simulated(20_000, seed=7)
    half = len(scores) // 2
    state = fit_conformal(scores[:half], labels[:half], FINDINGS, alpha)
    table = conformal_report(state, scores[half:], labels[half:], np.arange(half), 0, 0, 0.95)
    for name, row in table.iterrows():
        for cls, n_key in (("positive", "n_positive"), ("negative", "n_negative")):
            n = int(row[n_key])
            n_cal = state.n_positive[FINDINGS.index(name)] if cls == "positive" else (
                state.n_negative[FINDINGS.index(name)])  # fmt: skip
            k = math.ceil((n_cal + 1) * (1 - alpha))
            low, high = stats.betabinom.interval(0.99, n, n_cal + 1 - k, k)
            errors = round(row[f"error_{cls}"] * n)
            binomial = stats.binom.interval(0.99, n, alpha)
            assert low <= errors <= high, (name, cls, errors, n, (low, high), binomial)
        assert 0 < row["refer_rate"] < 1  # the scores overlap: some images are referred
    # the guarantee bounds each class separately, so a rare finding holds as a common one
    assert table.loc["Rare", "n_positive"] < 0.1 * half


def test_quantile_rule_equals_the_textbook_quantile():
    """An independent check of the rule, in exact arithmetic: the threshold is the smallest
    nonconformity ``q`` of the class's calibration images with #(s <= q) >= (n + 1)(1 - alpha)
    (the ceil((n+1)(1-alpha))/n empirical quantile, Angelopoulos & Bates 2021 eq. 1), and
    infinite (the class always in the set) when no ``q`` reaches it."""
    from fractions import Fraction

    rng = np.random.default_rng(3)
    for n in (1, 5, 9, 10, 19, 20, 37, 200):
        for alpha in (0.05, 0.1, 0.2, 0.5):
            positives = rng.random(n).round(2)  # ties included
            negatives = rng.random(n + 3).round(2)
            scores = np.append(np.concatenate([positives, negatives]), 0.5)
            labels = np.concatenate([np.ones(n), np.zeros(n + 3), [np.nan]])  # one unlabelled
            pos_at, neg_at, n_pos, n_neg = class_thresholds(scores, labels, alpha)
            assert (n_pos, n_neg) == (n, n + 3)
            for values, at, positive in ((positives, pos_at, True), (negatives, neg_at, False)):
                # nonconformity in exact decimals: 1 - p for the positive class, p for the negative
                s = [Fraction(str(v)) for v in values]
                s = [1 - v for v in s] if positive else s
                need = (len(s) + 1) * (1 - Fraction(str(alpha)))
                reaching = [q for q in sorted(set(s)) if sum(x <= q for x in s) >= need]
                if not reaching:
                    assert math.isinf(at), (n, alpha)
                    continue
                expected = float(1 - reaching[0]) if positive else float(reaching[0])
                assert at == pytest.approx(expected, abs=1e-12), (n, alpha, positive)
                covered = (values >= at) if positive else (values <= at)
                assert covered.mean() >= 1 - alpha - 1e-12  # coverage on the calibration set


def test_decisions_are_the_prediction_sets():
    state = ConformalState(0.1, ("A", "B"), (0.7, 0.2), (0.4, 0.6), (10, 10), (10, 10))
    decided = state.decide(np.array([[0.8, 0.1], [0.3, 0.5], [0.5, 0.65], [0.7, 0.6]]))
    # A: {pos} / {neg} / neither / {pos}; B: {neg} / both / {pos} / both
    assert decided.tolist() == [
        ["positive", "negative"],
        ["negative", REFER],
        [REFER, "positive"],
        ["positive", REFER],
    ]


def test_alpha_outside_0_1_is_refused_by_the_composed_config(tmp_path):
    for bad in ("0", "1", "1.5", "-0.1"):
        cfg = compose_config("evaluate", tmp_path, f"evaluation.conformal.alpha={bad}")
        with pytest.raises(
            ConfigError,
            match=r"evaluation.conformal.alpha=.* out of range; use a number in \(0, 1\)",
        ):
            EvaluationSettings.from_config(cfg.evaluation)
    cfg = compose_config("evaluate", tmp_path, "evaluation.conformal.enabled=maybe")
    with pytest.raises(ConfigError, match="evaluation.conformal.enabled"):
        EvaluationSettings.from_config(cfg.evaluation)
    shipped = EvaluationSettings.from_config(compose_config("evaluate", tmp_path).evaluation)
    assert shipped.conformal_settings.alpha == 0.1 and shipped.conformal_settings.enabled is True
    # a stored config written before the setting existed gets the shipped value
    older = {k: v for k, v in dict(compose_config("evaluate", tmp_path).evaluation).items()
             if k != "conformal"}  # fmt: skip
    assert EvaluationSettings.from_config(older).conformal_settings.alpha == 0.1


def _preds(path: Path, names, scores) -> Path:
    frame = pd.DataFrame(scores, columns=[f"prob_{c}" for c in class_names()])
    frame.insert(0, "Image Index", names)
    frame.to_csv(path, index=False)
    return path


def test_evaluate_writes_conformal_json_and_csv(synthetic_root, tmp_path):
    """``chexnet-evaluate preds= val_preds=`` on the synthetic NIH download: conformal.json is
    calibrated on the validation file, conformal.csv scores the test file, both as recomputed
    here from the files themselves."""
    truth = label_index(read_data_entry(synthetic_root / "Data_Entry_2017_v2020.csv"))
    names = list(truth.index)
    labels = truth[class_names()].to_numpy(np.float64)
    rng = np.random.default_rng(0)
    scores = np.clip(0.35 * labels + 0.65 * rng.random(labels.shape), 0, 1)
    half = len(names) // 2
    val = _preds(tmp_path / "val.csv", names[:half], scores[:half])
    test = _preds(tmp_path / "test.csv", names[half:], scores[half:])
    cfg = compose_config(
        "evaluate", tmp_path / "out", f"preds={test}", f"val_preds={val}",
        f"data.root={synthetic_root}", "evaluation.bootstrap_samples=200",
        "evaluation.conformal.alpha=0.2", "evaluation.plots=false", "evaluation.subgroups=[]",
    )  # fmt: skip
    evaluate(cfg)
    written = json.loads((tmp_path / "out" / CONFORMAL_FILE).read_text())
    assert written["alpha"] == 0.2 and list(written["classes"]) == class_names()
    expected = fit_conformal(scores[:half], labels[:half], class_names(), 0.2)
    state = ConformalState.read(tmp_path / "out" / CONFORMAL_FILE, class_names())
    assert state == expected
    for j, name in enumerate(class_names()):
        entry = written["classes"][name]
        assert entry["n_positive"] == int(labels[:half, j].sum())
        assert entry["n_negative"] == half - int(labels[:half, j].sum())
    table = pd.read_csv(tmp_path / "out" / "conformal.csv", index_col="finding")
    assert list(table.index) == class_names()
    for column in ("error_positive", "error_negative", "refer_rate"):
        assert {column, f"{column}_ci_low", f"{column}_ci_high"} <= set(table.columns)
    test_scores, test_labels = scores[half:], labels[half:]
    has_pos, has_neg = state.sets(test_scores)
    for j, name in enumerate(class_names()):
        positive = test_labels[:, j] > 0.5
        row = table.loc[name]
        assert row["n_positive"] == positive.sum()
        if positive.any():
            assert row["error_positive"] == pytest.approx((~has_pos[positive, j]).mean())
            assert (
                row["error_positive_ci_low"]
                <= row["error_positive"]
                <= row["error_positive_ci_high"]
            )
        assert row["error_negative"] == pytest.approx((~has_neg[~positive, j]).mean())
        assert row["refer_rate"] == pytest.approx((has_pos[:, j] == has_neg[:, j]).mean())
        assert row["refer_rate_ci_low"] <= row["refer_rate"] <= row["refer_rate_ci_high"]
    # without validation predictions nothing is calibrated (never on the test split itself)
    cfg = compose_config(
        "evaluate", tmp_path / "alone", f"preds={test}", f"data.root={synthetic_root}",
        "evaluation.bootstrap_samples=0", "evaluation.plots=false", "evaluation.subgroups=[]",
    )  # fmt: skip
    evaluate(cfg)
    assert not (tmp_path / "alone" / CONFORMAL_FILE).exists()


@pytest.fixture(scope="module")
def checkpoint_with_rule(tmp_path_factory) -> tuple[Path, ConformalState]:
    """A random 32 px ResNet-18 checkpoint in a run folder whose conformal.json (fitted on
    simulated scores for its 15 outputs) sits at the run's top, as evaluate writes it."""
    run = tmp_path_factory.mktemp("run")
    checkpoint = random_checkpoint(run / "checkpoints" / "best.ckpt", "resnet18", 32)
    rng = np.random.default_rng(1)
    labels = (rng.random((400, 15)) < 0.3).astype(np.float64)
    # the random network's probabilities sit near 0.5: thresholds there give all three decisions
    scores = np.where(labels > 0.5, rng.uniform(0.45, 0.6, labels.shape),
                      rng.uniform(0.4, 0.55, labels.shape))  # fmt: skip
    state = fit_conformal(scores, labels, class_names(), 0.3)
    state.save(run / CONFORMAL_FILE)
    return checkpoint, ConformalState.read(run / CONFORMAL_FILE, class_names())


def _expected(state: ConformalState, table: pd.DataFrame) -> np.ndarray:
    return state.decide(table[[f"prob_{n}" for n in class_names()]].to_numpy(np.float64))


@pytest.mark.slow  # over ~5 s: the slow tier keeps make test-fast under 3 min
def test_predict_and_the_api_decide_with_the_runs_conformal_json(
    checkpoint_with_rule, synthetic_root, tmp_path
):
    from chexnet_pl.predict import predict

    checkpoint, state = checkpoint_with_rule
    images = sorted((synthetic_root / "images").glob("*.png"))[:6]
    folder = tmp_path / "images"
    folder.mkdir()
    for path in images:
        (folder / path.name).write_bytes(path.read_bytes())
    cfg = compose_config("predict", tmp_path / "p", f"ckpt={checkpoint}", f"images={folder}",
                         f"out={tmp_path / 'p'}", "backend=torch", "top_k=1")  # fmt: skip
    predict(cfg)
    table = pd.read_csv(tmp_path / "p" / "predictions.csv")
    columns = [f"decision_{n}" for n in class_names()]
    assert set(columns) <= set(table.columns)
    assert np.array_equal(table[columns].to_numpy(), _expected(state, table))
    model = chexnet_pl.load(checkpoint)
    assert model.conformal == state
    answer = model.predict(images)
    assert np.array_equal(answer[columns].to_numpy(), table[columns].to_numpy())
    assert set(np.unique(answer[columns].to_numpy())) <= {"positive", "negative", REFER}
    # conformal= given explicitly wins; a calibration maps the rule's thresholds with it
    stricter = fit_conformal(np.full((50, 15), 0.5), np.full((50, 15), np.nan), class_names(), 0.5)
    stricter.save(tmp_path / "other.json")
    given = chexnet_pl.load(checkpoint, conformal=tmp_path / "other.json")
    assert given.conformal == stricter
    assert (given.predict(images)[columns] == REFER).all().all()  # no labels: both always in
    # a checkpoint without a conformal.json: no decision columns
    bare = random_checkpoint(tmp_path / "bare" / "best.ckpt", "resnet18", 32)
    assert not any(c.startswith("decision_") for c in chexnet_pl.load(bare).predict(images))


def test_the_service_and_an_export_carry_the_decisions(
    checkpoint_with_rule, synthetic_root, tmp_path
):
    from chexnet_pl.serving.app import Limits, create_app, page_html
    from chexnet_pl.serving.backends import load_backend
    from chexnet_pl.serving.export import export_checkpoint
    from chexnet_pl.serving.hosts import allowed_host_names
    from chexnet_pl.serving.predictor import Predictor
    from chexnet_pl.serving.sidecar import read_sidecar

    checkpoint, state = checkpoint_with_rule
    image = sorted((synthetic_root / "images").glob("*.png"))[0]
    expected = chexnet_pl.load(checkpoint).predict(image)
    backend, card = load_backend(checkpoint, "torch")
    assert card["conformal"]["alpha"] == state.alpha and card["conformal"]["file"] == CONFORMAL_FILE
    predictor = Predictor(backend, card)
    hosts = allowed_host_names("127.0.0.1", None)
    with app_on_loopback(create_app(predictor, Limits(2**22, 10**7), allowed_hosts=hosts)) as url:
        answer = requests.post(f"{url}/predict", data=image.read_bytes(), timeout=60).json()
    predictor.close()
    assert answer["conformal"] == {"alpha": state.alpha, "file": CONFORMAL_FILE}
    for row in answer["findings"]:
        assert row["decision"] == expected.at[0, f"decision_{row['finding']}"]
        assert answer["decisions"][row["finding"]] == row["decision"]
    page = page_html()
    assert 'class="decision"' in page or "td.decision" in page
    assert "td.decision .refer" in page and "REFER: needs a reader" in page
    # the export's sidecar carries the rule, and the export decides as the checkpoint
    exported = export_checkpoint(checkpoint, "torchscript", out=tmp_path / "best.pt")
    sidecar = read_sidecar(exported)
    assert ConformalState.from_json(sidecar["conformal"], class_names()) == state
    from_export = chexnet_pl.load(exported).predict(image)
    columns = [f"decision_{n}" for n in class_names()]
    assert np.array_equal(from_export[columns].to_numpy(), expected[columns].to_numpy())


@pytest.mark.slow  # over ~3 s: the slow tier keeps make test-fast under 3 min
def test_predict_on_a_safetensors_export_decides_with_its_sidecars_rule(
    checkpoint_with_rule, synthetic_root, tmp_path
):
    """``chexnet-predict ckpt=<model.safetensors>`` far from the run: the rule is the sidecar's,
    as ``chexnet_pl.load`` reads it (before, predict found no conformal.json and decided nothing)."""
    from chexnet_pl.predict import predict
    from chexnet_pl.serving.export import export_checkpoint

    checkpoint, state = checkpoint_with_rule
    exported = export_checkpoint(checkpoint, "safetensors", out=tmp_path / "far" / "m.safetensors")
    assert not list((tmp_path / "far").rglob("conformal.json"))
    image = sorted((synthetic_root / "images").glob("*.png"))[0]
    cfg = compose_config("predict", tmp_path / "p", f"ckpt={exported}", f"image={image}",
                         f"out={tmp_path / 'p'}", "backend=torch", "top_k=1")  # fmt: skip
    predict(cfg)
    table = pd.read_csv(tmp_path / "p" / "predictions.csv")
    columns = [f"decision_{n}" for n in class_names()]
    assert set(columns) <= set(table.columns), list(table.columns)
    assert np.array_equal(table[columns].to_numpy(), _expected(state, table))
    from_api = chexnet_pl.load(exported).predict(image)
    assert np.array_equal(from_api[columns].to_numpy(), table[columns].to_numpy())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: {**d, "alpha": 1.5}, r"alpha=1.5 is not a number in \(0, 1\)"),
        (
            lambda d: {**d, "classes": {"Mass": d["classes"]["Mass"]}},
            r"no conformal thresholds for \[",
        ),
        (lambda d: {**d, "format": "something else"}, "is not a conformal file"),
        (
            lambda d: {
                **d,
                "classes": {**d["classes"], "Edema": {**d["classes"]["Edema"], "positive_at": 2}},
            },
            "Edema's positive_at is 2",
        ),  # fmt: skip
    ],
)
def test_a_bad_conformal_file_is_refused_naming_it(checkpoint_with_rule, tmp_path, edit, message):
    checkpoint, state = checkpoint_with_rule
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(edit(state.to_json())))
    with pytest.raises(DataError, match=message) as raised:
        chexnet_pl.load(checkpoint, conformal=bad)
    assert str(bad) in str(raised.value)


def test_a_file_that_is_not_json_is_refused_naming_it(tmp_path):
    bad = tmp_path / "conformal.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=f"cannot read {bad} as JSON"):
        ConformalState.read(bad, class_names())
    with pytest.raises(DataError, match="conformal file not found"):
        ConformalState.read(tmp_path / "missing.json", class_names())
