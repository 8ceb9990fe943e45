"""The public Python API (``chexnet_pl.load``, ``Model.predict/explain/features``, ``overlay``,
``evaluate``, ``datasets``, ``train``) on a real tiny training run: the same numbers as the
commands (``chexnet-predict``, ``chexnet-evaluate``), the same rows as training, the same on an
ONNX export; and ``import chexnet_pl`` without torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import (
    compose_train_config,
    console_script,
    random_checkpoint,
    tiny_dataset_overrides,
    tiny_overrides,
)
from PIL import Image

import chexnet_pl
from chexnet_pl.components import instantiate
from chexnet_pl.data.images import read_gray
from chexnet_pl.errors import ConfigError, DataError
from chexnet_pl.visualization.figures import overlay as commands_overlay
from chexnet_pl.visualization.methods import METHODS

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-6  # the API against the commands (the same code path)
EXPORT_TOLERANCE = 1e-4  # ONNX Runtime against PyTorch (serving.export.PARITY_TOLERANCE)


@pytest.fixture(scope="module")
def api_run(tmp_path_factory, synthetic_root) -> Path:
    """``chexnet_pl.train`` on the tiny shipped demo recipe (two batches, test=true) at 64 px,
    so DenseNet-121's last feature maps are 2×2 (heat maps with a place)."""
    folder = tmp_path_factory.mktemp("api_run") / "run"
    overrides = [*tiny_overrides(synthetic_root), "data.image_size=64", f"hydra.run.dir={folder}"]
    return chexnet_pl.train(overrides)


@pytest.fixture(scope="module")
def model(api_run):
    return chexnet_pl.load(api_run / "checkpoints" / "best.ckpt")


def some_images(root: Path, count: int) -> list[Path]:
    return sorted((root / "images").glob("*.png"))[:count]


@pytest.mark.slow
def test_import_loads_neither_torch_nor_pandas():
    code = "import chexnet_pl, sys; print('torch' in sys.modules, 'pandas' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


@pytest.mark.slow
def test_train_and_evaluate_are_the_api_whatever_was_imported_first(tmp_path):
    """``chexnet_pl.evaluate`` / ``train`` are the API functions before and after their command
    modules are imported (which makes the module the package's attribute), and
    ``python -m chexnet_pl.evaluate`` is still the command."""
    code = (
        "import inspect, chexnet_pl\n"
        "from chexnet_pl.api.evaluation import evaluate\n"
        "from chexnet_pl.api.training import train\n"
        "assert chexnet_pl.evaluate is evaluate and chexnet_pl.train is train\n"
        "import chexnet_pl.evaluate as command\n"
        "import chexnet_pl.train\n"
        "assert chexnet_pl.evaluate is command and hasattr(command, 'main')\n"
        "try:\n"
        "    chexnet_pl.evaluate('missing.csv', 'no-such-folder')\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
        "try:\n"
        "    chexnet_pl.train(['data.rooot=x'])\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("DataError labels not found: no-such-folder"), lines
    assert lines[1].startswith("ConfigError") and "data.root" in lines[1], lines
    command = subprocess.run(
        [*console_script("evaluate"), "--help"], capture_output=True, text=True, cwd=tmp_path
    )
    module = subprocess.run(
        [sys.executable, "-m", "chexnet_pl.evaluate", "--help"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert module.returncode == 0 and "preds=" in module.stdout
    assert module.stdout == command.stdout


def test_train_refuses_a_mistyped_key_naming_the_right_one(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.root"):
        chexnet_pl.train(["data.rooot=/data/nih", f"hydra.run.dir={tmp_path}"])
    assert not any(tmp_path.iterdir())  # stopped before anything was written


@pytest.mark.slow
def test_train_returns_the_run_folder(api_run):
    assert (api_run / "checkpoints" / "best.ckpt").is_file()
    assert (api_run / "aucs.csv").is_file() and (api_run / "preds.csv").is_file()
    assert "image_size: 64" in (api_run / "config_resolved.yaml").read_text()


@pytest.mark.slow
def test_predict_equals_chexnet_predict(api_run, model, synthetic_root, tmp_path):
    image = some_images(synthetic_root, 1)[0]
    out = tmp_path / "predicted"
    result = subprocess.run(
        [*console_script("predict"), f"ckpt={api_run}/checkpoints/best.ckpt", f"image={image}",
         f"out={out}", "backend=torch", f"hydra.run.dir={tmp_path}/hydra"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    expected = pd.read_csv(out / "predictions.csv")
    table = model.predict([image])
    columns = [f"prob_{name}" for name in model.class_names]
    assert list(table.columns) == [
        "image",
        *columns,
        *(f"above_{name}" for name in model.class_names),
        "ood_score",
        "in_distribution",
        *(f"decision_{name}" for name in model.class_names),  # the run's conformal.json
    ]
    assert table["image"].tolist() == [str(image)]
    decisions = [f"decision_{name}" for name in model.class_names]
    assert table[decisions].to_numpy().tolist() == expected[decisions].to_numpy().tolist()
    assert np.abs(table[columns].to_numpy() - expected[columns].to_numpy()).max() <= TOLERANCE
    assert table.at[0, "ood_score"] == pytest.approx(expected.at[0, "ood_score"], rel=1e-4)
    assert table.at[0, "in_distribution"] == expected.at[0, "in_distribution"]
    # The run's aucs.csv gives the thresholds, as it does the command's.
    assert model.thresholds_source == str(api_run / "aucs.csv")
    assert model.thresholds_how["rule"] == "Youden's J on the validation split"
    aucs = pd.read_csv(api_run / "aucs.csv", index_col="class")
    for name in model.class_names:
        threshold = aucs.at[name, "threshold"]
        if pd.isna(threshold):  # undefined on validation: no threshold, no verdict (issue 31)
            assert np.isnan(model.thresholds[name]) and pd.isna(table.at[0, f"above_{name}"])
            assert model.threshold_notes[name].startswith("undefined")
            continue
        assert model.thresholds[name] == pytest.approx(threshold)
        assert table.at[0, f"above_{name}"] == (table.at[0, f"prob_{name}"] >= threshold)


@pytest.mark.slow
def test_a_calibration_applies_as_chexnet_predict_applies_it(
    api_run, model, synthetic_root, tmp_path
):
    from chexnet_pl.evaluation.calibration import Calibration

    names = model.class_names
    scaling = Calibration("temperature", names, np.full(len(names), 0.8), np.zeros(len(names)))
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(scaling.to_json()))
    image = some_images(synthetic_root, 1)[0]
    out = tmp_path / "predicted"
    result = subprocess.run(
        [*console_script("predict"), f"ckpt={api_run}/checkpoints/best.ckpt", f"image={image}",
         f"out={out}", "backend=torch", f"calibration={path}", f"hydra.run.dir={tmp_path}/h"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    calibrated = chexnet_pl.load(api_run / "checkpoints" / "best.ckpt", calibration=path)
    columns = [f"prob_{name}" for name in names]
    expected = pd.read_csv(out / "predictions.csv")[columns].to_numpy()
    got = calibrated.predict([image])[columns].to_numpy()
    assert np.abs(got - expected).max() <= TOLERANCE
    assert np.abs(got - model.predict([image])[columns].to_numpy()).max() > 1e-3  # it applied
    # The run's thresholds were chosen on raw probabilities: they are mapped through it too.
    raw = np.array([[model.thresholds[name] for name in names]])
    mapped = scaling.apply(raw, names)[0]
    assert [calibrated.thresholds[name] for name in names] == pytest.approx(mapped, nan_ok=True)


@pytest.mark.slow
def test_predict_takes_arrays_pil_images_dicom_and_folders(model, synthetic_root, tmp_path):
    from test_dicom import write_dicom

    paths = some_images(synthetic_root, 3)
    by_path = model.predict(paths, batch_size=2)
    gray = read_gray(paths[0])
    dicom = write_dicom(tmp_path / "xray.dcm", gray)
    shutil.copy(paths[1], tmp_path / paths[1].name)
    others = model.predict([gray, Image.open(paths[0]), dicom, tmp_path])  # a folder: 2 images
    folder = [str(tmp_path / paths[1].name), str(dicom)]  # sorted by name
    assert others["image"].tolist() == ["image 0", "image 1", str(dicom), *folder]
    columns = [c for c in by_path.columns if c.startswith("prob_")]
    got, expected = others[columns].to_numpy(), by_path[columns].to_numpy()
    for row, same_as in ((0, 0), (1, 0), (2, 0), (3, 1), (4, 0)):
        assert np.abs(got[row] - expected[same_as]).max() <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_explain_gives_a_map_of_the_image_in_0_1(model, synthetic_root, method):
    image = some_images(synthetic_root, 1)[0]
    gray = read_gray(image)
    heat = model.explain(image, "Pleural Thickening", method=method)
    assert heat.shape == gray.shape and heat.dtype == np.float32
    assert np.isfinite(heat).all() and heat.min() >= 0.0 and heat.max() <= 1.0
    if method == "cam":  # the same map as the commands' figures
        from chexnet_pl.visualization.explain import XRay, model_input
        from chexnet_pl.visualization.figures import upsample
        from chexnet_pl.visualization.torch_explainer import TorchExplainer

        explainer = TorchExplainer(model.network, "cam")
        batch = model_input([XRay(image.name, gray)], model.image_size)
        explainer.probabilities(batch)
        index = model.class_names.index("Pleural_Thickening")
        expected = upsample(explainer.maps(batch, [index])[0, 0], gray.shape)
        assert heat.max() > heat.min()  # 64 px: 2×2 feature maps, a map with a place
        assert np.abs(heat - np.clip(expected, 0, 1)).max() <= TOLERANCE
        drawn = chexnet_pl.overlay(image, heat)
        assert drawn.mode == "RGB" and drawn.size == (gray.shape[1], gray.shape[0])
        assert np.array_equal(np.asarray(drawn), commands_overlay(gray, heat))


def test_explain_names_the_findings_for_an_unknown_one(tmp_path, synthetic_root):
    checkpoint = random_checkpoint(tmp_path / "checkpoints" / "best.ckpt", "resnet18", 32)
    model = chexnet_pl.load(checkpoint)
    with pytest.raises(DataError, match="Pleural_Thickening"):
        model.explain(some_images(synthetic_root, 1)[0], "Pleural effusion")
    with pytest.raises(DataError, match="one image"):
        model.explain(some_images(synthetic_root, 2), "Edema")
    with pytest.raises(DataError, match=r"in \[0, 1\]"):
        model.predict(np.full((8, 8), 3.0))
    with pytest.raises(DataError, match="not found"):
        chexnet_pl.load(tmp_path / "missing.ckpt")


@pytest.mark.slow
def test_features_and_predictions_are_the_same_on_the_onnx_export(
    api_run, model, synthetic_root, tmp_path
):
    from chexnet_pl.serving.export import export_checkpoint

    images = some_images(synthetic_root, 4)
    (tmp_path / "export").mkdir()
    out = export_checkpoint(
        api_run / "checkpoints" / "best.ckpt", "onnx", out=tmp_path / "export", cams=True
    )
    assert out.name == "best.onnx"
    exported = chexnet_pl.load(out)
    features = model.features(images, batch_size=3)
    assert features.shape == (4, 1024) and features.std() > 0  # DenseNet-121's embedding
    assert np.abs(exported.features(images) - features).max() <= EXPORT_TOLERANCE
    columns = [f"prob_{name}" for name in model.class_names]
    on_onnx, on_torch = exported.predict(images), model.predict(images)
    assert np.abs(on_onnx[columns].to_numpy() - on_torch[columns].to_numpy()).max() <= (
        EXPORT_TOLERANCE
    )
    assert exported.thresholds == pytest.approx(model.thresholds, nan_ok=True)  # recorded at export
    heat = exported.explain(images[0], "Edema")
    assert np.abs(heat - model.explain(images[0], "Edema")).max() <= EXPORT_TOLERANCE
    with pytest.raises(DataError, match="needs PyTorch"):
        exported.explain(images[0], "Edema", method="gradcam")
    # An export written before the features output: its sidecar lists the outputs it has.
    old = tmp_path / "old" / out.name
    old.parent.mkdir()
    shutil.copy(out, old)
    card = json.loads(Path(f"{out}.json").read_text())
    card["outputs"] = ["probabilities", "cams"]
    Path(f"{old}.json").write_text(json.dumps(card))
    with pytest.raises(DataError, match="export it again"):
        chexnet_pl.load(old).features(images)


@pytest.mark.slow
def test_a_torchscript_export_predicts_and_explains_as_the_checkpoint(
    api_run, model, synthetic_root, tmp_path
):
    from chexnet_pl.serving.export import export_checkpoint

    images = some_images(synthetic_root, 2)
    out = export_checkpoint(
        api_run / "checkpoints" / "best.ckpt", "torchscript", out=tmp_path / "best.pt", cams=True
    )
    exported = chexnet_pl.load(out)
    assert exported.backend == "torchscript" and exported.class_names == model.class_names
    columns = [f"prob_{name}" for name in model.class_names]
    difference = exported.predict(images)[columns].to_numpy() - model.predict(images)[columns]
    assert np.abs(difference.to_numpy()).max() <= EXPORT_TOLERANCE
    heat = exported.explain(images[0], "Edema")
    assert np.abs(heat - model.explain(images[0], "Edema")).max() <= EXPORT_TOLERANCE
    with pytest.raises(DataError, match="no features output"):
        exported.features(images)


@pytest.mark.slow
def test_evaluate_equals_chexnet_evaluate(api_run, model, synthetic_root, tmp_path):
    command_out = tmp_path / "command"
    result = subprocess.run(
        [*console_script("evaluate"), f"preds={api_run}/preds.csv", f"data.root={synthetic_root}",
         "evaluation.bootstrap_samples=50", f"hydra.run.dir={command_out}"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = chexnet_pl.evaluate(api_run / "preds.csv", synthetic_root, bootstrap_samples=50)
    expected = pd.read_csv(command_out / "aucs.csv", index_col="class")
    pd.testing.assert_frame_equal(evaluation.aucs, expected)
    pd.testing.assert_frame_equal(
        evaluation.calibration, pd.read_csv(command_out / "calibration.csv", index_col=0)
    )
    written = evaluation.write(tmp_path / "api")
    assert (written / "aucs.csv").read_bytes() == (command_out / "aucs.csv").read_bytes()
    assert {"roc_curves.png", "pr_curves.png", "reliability.png"} <= set(evaluation.files)
    per_class = {f"test/auroc_{name}": value for name, value in expected["auroc"].items()
                 if name in model.class_names and not np.isnan(value)}  # fmt: skip
    assert per_class and {k: evaluation.metrics[k] for k in per_class} == pytest.approx(per_class)
    # Model.predict's table (an ``image`` column of paths) is scored by file name.
    test = pd.read_csv(api_run / "preds.csv")
    paths = [synthetic_root / "images" / name for name in test["Image Index"]]
    again = chexnet_pl.evaluate(model.predict(paths), synthetic_root, bootstrap_samples=50)
    pd.testing.assert_series_equal(
        again.aucs["auroc"], evaluation.aucs["auroc"], atol=1e-6, check_exact=False
    )
    # A dataset of chexnet_pl.datasets gives the same labels as NIH's folder.
    from chexnet_pl.datasets import NIH

    on_dataset = chexnet_pl.evaluate(
        api_run / "preds.csv", NIH(synthetic_root, image_size=64), bootstrap_samples=50
    )
    pd.testing.assert_frame_equal(on_dataset.aucs, evaluation.aucs)
    with pytest.raises(ConfigError, match="bootstrap_sample"):
        chexnet_pl.evaluate(api_run / "preds.csv", synthetic_root, bootstrap_sample=5)


def _training_split(overrides: list[str], tmp_path: Path, split: str):
    datamodule = instantiate(compose_train_config(tmp_path / "composed", overrides).data)
    datamodule.setup()
    return datamodule.datasets[split]


def _same_rows(dataset, trained) -> None:
    pd.testing.assert_frame_equal(dataset.table, trained.table)
    np.testing.assert_array_equal(dataset.labels, trained.labels)  # NaN where not labelled
    image, label = dataset[0]
    sample = trained[0]
    assert image.dtype == sample["img"].dtype and image.shape == sample["img"].shape
    np.testing.assert_array_equal(label.numpy(), sample["lab"].numpy())


@pytest.mark.parametrize("split", ["val", "test"])
def test_nih_dataset_reads_the_rows_training_reads(synthetic_root, tmp_path, split):
    from chexnet_pl.datasets import NIH

    dataset = NIH(synthetic_root, split=split, image_size=32)
    trained = _training_split(tiny_overrides(synthetic_root), tmp_path, split)
    _same_rows(dataset, trained)
    image, label = dataset[0]
    assert tuple(image.shape) == (1, 32, 32) and str(image.dtype) == "torch.uint8"
    assert tuple(label.shape) == (15,) and dataset.class_names[-1] == "No Finding"
    assert np.array_equal(image.numpy(), trained[0]["img"].numpy())  # no augmentation off train


def test_chexpert_and_mimic_datasets_read_the_rows_training_reads(
    chexpert_root, mimic_root, tmp_path
):
    from chexnet_pl.datasets import MIMICCXR, CheXpert

    for cls, data, root in ((CheXpert, "chexpert", chexpert_root), (MIMICCXR, "mimic_cxr", mimic_root)):  # fmt: skip
        dataset = cls(root, split="val", image_size=32)
        trained = _training_split(
            tiny_dataset_overrides(data, f"data.root={root}"), tmp_path / data, "val"
        )
        assert len(dataset) > 0 and dataset.class_names == list(trained.pathologies)
        _same_rows(dataset, trained)


@pytest.mark.slow
def test_the_tutorial_runs(nih_sample, tmp_path):
    """docs/tutorial.py, as a reader runs it (``python docs/tutorial.py``), on the NIH sample."""
    env = {**os.environ, "CHEXNET_TUTORIAL_DATA": str(nih_sample),
           "CHEXNET_TUTORIAL_OUT": str(tmp_path), "WANDB_MODE": "offline"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, str(REPO / "docs" / "tutorial.py")],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "evaluation" / "aucs.csv").is_file()
    assert (tmp_path / "overlay.png").is_file()
    assert "linear probe" in result.stdout
