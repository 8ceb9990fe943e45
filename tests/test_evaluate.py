"""Evaluation: AUROC equal to scikit-learn's, patient bootstrap, operating points, stored
predictions, scoring a predictions file (real NIH metadata), the command line."""

from __future__ import annotations

import errno
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_config, make_model
from sklearn.metrics import roc_auc_score

from chexnet_pl.command_runner import run_or_exit
from chexnet_pl.data.nih import label_index
from chexnet_pl.data.nih_table import (
    FINDINGS,
    PAPER_AUROC,
    PAPER_MEAN,
    class_names,
    read_data_entry,
)
from chexnet_pl.data.splits import read_name_list
from chexnet_pl.errors import DataError
from chexnet_pl.evaluate import evaluate
from chexnet_pl.evaluation.auroc import bootstrap_auroc, weighted_auroc
from chexnet_pl.evaluation.predictions import read_predictions
from chexnet_pl.evaluation.report import (
    choose_threshold,
    format_report,
    operating_point,
    score_predictions,
)
from chexnet_pl.label_sets import mean_row

REPO = Path(__file__).resolve().parents[1]


def compose_evaluate(output_dir: Path, *overrides: str):
    return compose_config("evaluate", output_dir, *overrides)


def test_weighted_auroc_equals_scikit_learn_with_ties_and_resamples():
    rng = np.random.default_rng(1)
    labels = (rng.random(500) < 0.3).astype(int)
    scores = np.round(labels * 0.2 + rng.random(500), 1)  # many ties
    assert abs(weighted_auroc(scores, labels)[0] - roc_auc_score(labels, scores)) < 1e-12
    counts = rng.integers(0, 3, 500)  # a resample: row i drawn counts[i] times
    repeated = np.repeat(np.arange(500), counts)
    expected = roc_auc_score(labels[repeated], scores[repeated])
    assert abs(weighted_auroc(scores, labels, counts[None, :])[0] - expected) < 1e-12
    assert np.isnan(weighted_auroc(scores, np.zeros(500))[0])


def test_bootstrap_resamples_patients_not_images():
    rng = np.random.default_rng(2)
    patients = np.repeat(np.arange(50), 4)
    labels = (rng.random((200, 2)) < 0.4).astype(int)
    scores = labels * 0.5 + rng.random((200, 2))
    samples = bootstrap_auroc(scores, labels, patients, samples=300, seed=0)
    assert samples.shape == (300, 2)
    again = bootstrap_auroc(scores, labels, patients, samples=300, seed=0)
    np.testing.assert_array_equal(samples, again)
    point = weighted_auroc(scores[:, 0], labels[:, 0])[0]
    low, high = np.percentile(samples[:, 0], [2.5, 97.5])
    assert low < point < high and high - low > 0.02


def test_overall_intervals_are_the_patient_bootstrap_drawn_as_before():
    """aucs.csv's intervals come from the grouped engine of subgroups and comparisons; they are
    the percentiles of scikit-learn's AUROC on the same patient draws the per-class bootstrap
    always made (``default_rng(seed).integers(0, patients, (B, patients))``), to the last digit,
    with ties, unlabelled images and several images per patient."""
    rng = np.random.default_rng(5)
    names = ["A", "B", "C", "No Finding"]
    patients = rng.integers(0, 70, 240)
    labels = (rng.random((240, 4)) < 0.3).astype(float)
    labels[rng.random((240, 4)) < 0.2] = np.nan  # not labelled: in no class's images
    scores = np.round(np.nan_to_num(labels) * 0.3 + rng.random((240, 4)), 1)  # many ties
    table = score_predictions(scores, labels, patients, names, 60, 3, 0.9)
    codes, uniques = pd.factorize(patients)
    draws = np.random.default_rng(3).integers(0, len(uniques), size=(60, len(uniques)))
    resampled = np.full((60, 4), np.nan)
    for b, drawn in enumerate(draws):
        rows = np.repeat(np.arange(240), np.bincount(drawn, minlength=len(uniques))[codes])
        for j in range(4):
            known = rows[~np.isnan(labels[rows, j])]
            if len(np.unique(labels[known, j])) == 2:
                resampled[b, j] = roc_auc_score(labels[known, j], scores[known, j])
    means = np.nanmean(resampled[:, :3], axis=1)  # the findings: No Finding apart
    low, high = np.percentile(np.column_stack([resampled, means]), [5, 95], axis=0)
    order = ["A", "B", "C", "No Finding"]
    np.testing.assert_allclose(table.loc[order, "ci_low"], low[:4], atol=1e-12)
    np.testing.assert_allclose(table.loc[order, "ci_high"], high[:4], atol=1e-12)
    mean = mean_row(names)
    assert table.at[mean, "ci_low"] == pytest.approx(low[4], abs=1e-12)
    assert table.at[mean, "ci_high"] == pytest.approx(high[4], abs=1e-12)


def test_operating_points():
    scores = np.array([0.1, 0.2, 0.35, 0.4, 0.8, 0.9])
    labels = np.array([0, 0, 1, 0, 1, 1])
    point = operating_point(scores, labels, 0.35)
    assert point == pytest.approx(
        {"sensitivity": 1.0, "specificity": 2 / 3, "ppv": 0.75, "f1": 6 / 7}
    )
    assert choose_threshold(scores, labels, "f1") == pytest.approx(0.35)
    assert np.isnan(choose_threshold(scores, np.zeros(6), "youden"))
    with pytest.raises(ValueError, match="unknown evaluation.threshold 'max'"):
        choose_threshold(scores, labels, "max")


def test_youden_threshold_maximises_sensitivity_plus_specificity():
    """J = sensitivity + specificity − 1 has one maximum here (0.8 at 0.6; 0.75 at 0.4, the
    threshold of full sensitivity and of the best F1): the rule, not a tie, picks 0.6."""
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    labels = np.array([0, 0, 0, 1, 0, 1, 1, 1, 1])
    youden = {
        t: point["sensitivity"] + point["specificity"] - 1
        for t in scores
        for point in [operating_point(scores, labels, t)]
    }
    assert sorted(youden.values())[-2:] == pytest.approx([0.75, 0.8])  # a unique maximum
    assert max(youden, key=youden.get) == 0.6
    assert choose_threshold(scores, labels, "youden") == 0.6
    # Other rules choose otherwise on these data: full sensitivity and the best F1 at 0.4.
    assert operating_point(scores, labels, 0.4)["sensitivity"] == 1.0
    assert choose_threshold(scores, labels, "f1") == 0.4


def test_report_table_layout_and_undefined_class():
    rng = np.random.default_rng(3)
    names = class_names()
    labels = (rng.random((400, 15)) < 0.3).astype(float)
    labels[:, FINDINGS.index("Hernia")] = 0  # no positives: undefined, not 0.5
    scores = np.clip(labels * 0.4 + rng.random((400, 15)) * 0.7, 0, 1)
    table = score_predictions(
        scores,
        labels,
        np.arange(400) // 2,
        names,
        200,
        0,
        0.95,
        [0.5] * 15,
        (PAPER_AUROC, PAPER_MEAN),
    )
    mean_name = mean_row(names)
    assert list(table.index) == [*FINDINGS, mean_name, "No Finding"]
    assert np.isnan(table.at["Hernia", "auroc"]) and np.isnan(table.at["Hernia", "ci_low"])
    defined = [f for f in FINDINGS if f != "Hernia"]
    assert table.at[mean_name, "auroc"] == pytest.approx(table.loc[defined, "auroc"].mean())
    assert (
        table.at["Mass", "paper_auroc"] == PAPER_AUROC["Mass"]
        and table.at[mean_name, "paper_auroc"] == 0.841
    )
    assert table.at["Mass", "diff_vs_paper"] == pytest.approx(table.at["Mass", "auroc"] - 0.8676)
    assert (table.loc[defined, "ci_low"] < table.loc[defined, "auroc"]).all()
    assert (table.loc[defined, "auroc"] < table.loc[defined, "ci_high"]).all()
    assert table.at["Mass", "positives"] + table.at["Mass", "negatives"] == 400
    text = format_report(table)
    assert "undefined" in text and "nan" not in text.lower().replace("undefined", "")


def _write_preds(path: Path, names, scores, columns=None):
    frame = pd.DataFrame(scores, columns=columns or [f"prob_{c}" for c in class_names()])
    frame.insert(0, "Image Index", names)
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda f: f.assign(**{"Image Index": ["zzz.png", *f["Image Index"][1:]]}),
            r"1 image name\(s\) not in the data's metadata, e.g. \['zzz.png'\]",
        ),
        (
            lambda f: f.drop(columns=["prob_Mass", "prob_Hernia"]),
            r"lacks 2 class column\(s\): \['prob_Hernia', 'prob_Mass'\]",
        ),
        (
            lambda f: f.assign(prob_Edema=["high", *f["prob_Edema"][1:]]),
            r"line 2, column prob_Edema: 'high' is not a probability",
        ),
        (
            lambda f: f.assign(prob_Edema=[*f["prob_Edema"][:3], 1.5, *f["prob_Edema"][4:]]),
            r"line 5, column prob_Edema: 1.5 is not a probability",  # not np.float64(1.5)
        ),
        (lambda f: pd.concat([f, f.head(1)]), r"has more than one row"),
    ],
)
def test_bad_predictions_files(tmp_path, synthetic_root, edit, message):
    truth = label_index(read_data_entry(synthetic_root / "Data_Entry_2017_v2020.csv"))
    frame = pd.DataFrame(np.full((10, 15), 0.5), columns=[f"prob_{c}" for c in class_names()])
    frame.insert(0, "Image Index", truth.index[:10])
    path = tmp_path / "preds.csv"
    edit(frame).to_csv(path, index=False)
    with pytest.raises(DataError, match=message):
        read_predictions(path, truth.index, truth.attrs["labels"])


def test_a_header_only_predictions_file_is_named(tmp_path, synthetic_root):
    """``chexnet-evaluate preds=<a file with its header and no rows>``: the error names the file
    (it said only "no predictions to score for the test split")."""
    path = _write_preds(tmp_path / "header_only.csv", [], np.zeros((0, 15)))
    assert path.read_text().count("\n") == 1  # the header line alone
    cfg = compose_evaluate(tmp_path / "out", f"preds={path}", f"data.root={synthetic_root}")
    with pytest.raises(DataError) as raised:
        evaluate(cfg)
    assert str(raised.value).startswith(f"{path} has a header and no rows")


@pytest.mark.slow  # over ~8 s: the slow tier keeps make test-fast under 3 min
def test_scoring_a_file_built_from_the_real_metadata(nih_meta, tmp_path):
    """The official test list (25,596 images) with noisy label-derived scores, scored without a model."""
    table = read_data_entry(nih_meta / "Data_Entry_2017_v2020.csv.gz")
    test_names = read_name_list(nih_meta / "test_list.txt")
    truth = label_index(table).loc[test_names]
    rng = np.random.default_rng(0)
    labels = truth[class_names()].to_numpy()
    scores = np.clip(0.25 * labels + rng.random(labels.shape) * 0.75, 0, 1).round(
        3
    )  # ties included
    preds = _write_preds(tmp_path / "preds.csv", test_names, scores)
    cfg = compose_evaluate(
        tmp_path / "out",
        f"preds={preds}",
        f"data.root={nih_meta}",
        "evaluation.bootstrap_samples=50",
        "evaluation.subgroups=[]",  # subgroups of the real test list: tests/test_subgroups.py
    )
    metrics = evaluate(cfg)
    aucs = pd.read_csv(tmp_path / "out" / "aucs.csv", index_col="class")
    for j, name in enumerate(class_names()):
        expected = roc_auc_score(labels[:, j], scores[:, j])
        assert abs(aucs.at[name, "auroc"] - expected) < 1e-6
        assert aucs.at[name, "positives"] == labels[:, j].sum()
    assert metrics["test/auroc"] == pytest.approx(
        np.mean([roc_auc_score(labels[:, j], scores[:, j]) for j in range(14)]), abs=1e-6
    )
    assert (tmp_path / "out" / "roc_curves.png").is_file() and (
        tmp_path / "out" / "pr_curves.png"
    ).is_file()


def test_a_full_disk_during_evaluation_is_one_line_and_leaves_no_half_file(
    synthetic_root, tmp_path, monkeypatch, caplog
):
    truth = label_index(read_data_entry(synthetic_root / "Data_Entry_2017_v2020.csv"))
    rng = np.random.default_rng(0)
    preds = _write_preds(tmp_path / "preds.csv", truth.index[:40], rng.random((40, 15)))
    out = tmp_path / "out"
    cfg = compose_evaluate(
        out, f"preds={preds}", f"data.root={synthetic_root}", "evaluation.bootstrap_samples=20",
        "evaluation.subgroups=[]",
    )  # fmt: skip
    real_to_csv = pd.DataFrame.to_csv

    def to_csv(self, path=None, *args, **kwargs):
        if path is None or Path(path).parent != out:
            return real_to_csv(self, path, *args, **kwargs)
        Path(path).write_text("Image Index,prob_Atel")  # half a file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)
    with pytest.raises(SystemExit) as stopped, caplog.at_level(logging.ERROR):
        run_or_exit(evaluate, cfg)
    assert stopped.value.code == 2
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert (
        line.startswith(f"no space left on the disk of {out} while writing ") and "\n" not in line
    )
    assert "it needs more than the 21 bytes written before the disk filled" in line
    assert not [p.name for p in out.rglob("*") if p.is_file() and p.suffix != ".log"]


@pytest.fixture
def trained_run(learnt_run):
    return learnt_run[1]


def test_train_and_evaluate_share_one_code_path(trained_run, tmp_path):
    cfg = compose_evaluate(
        tmp_path / "eval",
        f"ckpt={trained_run}/checkpoints/best.ckpt",
        "data.num_workers=0",
        "evaluation.bootstrap_samples=100",
    )
    evaluate(cfg)
    from_train = pd.read_csv(trained_run / "aucs.csv", index_col="class")
    from_evaluate = pd.read_csv(tmp_path / "eval" / "aucs.csv", index_col="class")
    pd.testing.assert_frame_equal(from_train, from_evaluate)
    # the conformal rule too: calibrated on the same validation predictions, scored on test
    # (train holds float32 predictions in memory, evaluate reads them back stored: equal to 1e-7)
    rules = [json.loads((folder / "conformal.json").read_text()) for folder in
             (trained_run, tmp_path / "eval")]  # fmt: skip
    assert (
        rules[0]["alpha"] == rules[1]["alpha"]
        and rules[0]["classes"].keys() == rules[1]["classes"].keys()
    )
    for name, entry in rules[0]["classes"].items():
        assert entry == pytest.approx(rules[1]["classes"][name], abs=1e-7), name
    pd.testing.assert_frame_equal(
        pd.read_csv(trained_run / "conformal.csv"),
        pd.read_csv(tmp_path / "eval" / "conformal.csv"),
        atol=1e-7,
    )
    pd.testing.assert_frame_equal(
        pd.read_csv(trained_run / "preds.csv"), pd.read_csv(tmp_path / "eval" / "preds.csv")
    )
    assert list(pd.read_csv(tmp_path / "eval" / "preds.csv").columns) == [
        "Image Index",
        *[f"prob_{c}" for c in class_names()],
    ]


def test_second_evaluation_reuses_stored_predictions(trained_run, tmp_path, monkeypatch, caplog):
    ckpt = f"ckpt={trained_run}/checkpoints/best.ckpt"
    evaluate(
        compose_evaluate(
            tmp_path / "first",
            ckpt,
            "split=val",
            "data.num_workers=0",
            "evaluation.bootstrap_samples=0",
        )
    )

    def must_not_run(*args, **kwargs):
        raise AssertionError("the model ran again")

    monkeypatch.setattr("chexnet_pl.evaluation.runner.predict", must_not_run)
    with caplog.at_level(logging.INFO):
        evaluate(
            compose_evaluate(
                tmp_path / "second",
                ckpt,
                "split=val",
                "data.num_workers=0",
                "evaluation.bootstrap_samples=0",
            )
        )
    assert "reusing stored predictions" in caplog.text
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "first" / "preds.csv"),
        pd.read_csv(tmp_path / "second" / "preds.csv"),
    )


@pytest.mark.parametrize("tta", ["hflip", "tencrop"])
def test_test_time_augmentation(trained_run, tmp_path, tta):
    # 48 px (the run trained at 96): ten-crop costs ten forward passes per image
    common = ("data.num_workers=0", "data.image_size=48", "evaluation.bootstrap_samples=0")
    ckpt = f"ckpt={trained_run}/checkpoints/best.ckpt"
    plain = evaluate(compose_evaluate(tmp_path / "plain", ckpt, *common))
    augmented = evaluate(compose_evaluate(tmp_path / tta, ckpt, f"evaluation.tta={tta}", *common))
    a = pd.read_csv(tmp_path / "plain" / "preds.csv").iloc[:, 1:].to_numpy()
    b = pd.read_csv(tmp_path / tta / "preds.csv").iloc[:, 1:].to_numpy()
    assert a.shape == b.shape and not np.allclose(a, b) and ((b >= 0) & (b <= 1)).all()
    assert set(plain) == set(augmented)


def test_hflip_is_the_mean_of_image_and_mirror():
    from chexnet_pl.evaluation.predictions import _probabilities

    model = make_model().eval()
    images = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        expected = (torch.sigmoid(model(images)) + torch.sigmoid(model(images.flip(-1)))) / 2
        torch.testing.assert_close(_probabilities(model, images, "hflip", 32), expected)


def test_tencrop_is_the_mean_of_each_images_own_ten_crops():
    """Each image's probability is the mean over its own four corners, centre and their mirrors,
    each crop scored alone here: a batch of two different images must not mix their crops."""
    from chexnet_pl.evaluation.predictions import _probabilities

    model = make_model().eval()
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 1, 36, 36), dtype=torch.uint8, generator=generator)
    images[1] //= 4  # a darker second image: its crops score unlike the first's
    offsets = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)]  # 36 px → 32 px crops; centre at 2
    with torch.inference_mode():
        expected = []
        for image in images:
            crops = [image[None, :, top : top + 32, left : left + 32] for top, left in offsets]
            crops += [crop.flip(-1) for crop in crops]
            expected.append(torch.stack([torch.sigmoid(model(c))[0] for c in crops]).mean(0))
        expected = torch.stack(expected)
        assert (expected[0] - expected[1]).abs().max() > 1e-3  # the images are told apart
        augmented = _probabilities(model, images, "tencrop", 32)
    assert augmented.shape == (2, 15)
    torch.testing.assert_close(augmented, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_command_line_scores_a_file_and_reports_bad_input(synthetic_root, tmp_path):
    truth = label_index(read_data_entry(synthetic_root / "Data_Entry_2017_v2020.csv"))
    rng = np.random.default_rng(0)
    good = _write_preds(tmp_path / "good.csv", truth.index, rng.random((len(truth), 15)))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "chexnet_pl.evaluate",
            f"preds={good}",
            f"data.root={synthetic_root}",
            f"hydra.run.dir={tmp_path / 'out'}",
            "evaluation.bootstrap_samples=50",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "out" / "aucs.csv").is_file() and "Mean (14 findings)" in (
        tmp_path / "out" / "evaluate.log"
    ).read_text()
    bad = tmp_path / "bad.csv"
    pd.read_csv(good).drop(columns=["prob_Edema"]).to_csv(bad, index=False)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "chexnet_pl.evaluate",
            f"preds={bad}",
            f"data.root={synthetic_root}",
            f"hydra.run.dir={tmp_path / 'bad_out'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2
    assert "lacks 1 class column(s): ['prob_Edema']" in run.stderr + run.stdout
    assert "Traceback" not in run.stderr


def test_cpu_bf16_detection_reads_the_cpu_flags(tmp_path):
    from chexnet_pl.device import cpu_has_fast_bf16 as detect

    cases = {
        "avx2": ("flags\t\t: fpu sse2 avx avx2 fma", False),  # this project's machine
        "avx512_bf16": ("flags\t\t: fpu avx2 avx512f avx512_bf16", True),
        "amx": ("flags\t\t: fpu avx2 amx_tile amx_bf16 amx_int8", True),
        "elsewhere": ("model name\t: avx512_bf16 in a name, not a flag\nflags\t\t: avx2", False),
    }
    for name, (text, expected) in cases.items():
        path = tmp_path / name
        path.write_text(f"processor\t: 0\n{text}\n")
        assert detect(path) is expected, name
    assert detect(tmp_path / "no_cpuinfo") is False
