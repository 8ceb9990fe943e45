"""Export as served (uint8 in, probabilities and CAMs out): ONNX Runtime (CPU) and TorchScript equal
the PyTorch module within 1e-4 on the real NIH sample images, for DenseNet-121 and ResNet-18 (ONNX
Runtime on ResNet-18 and on AlexNet: tests/test_serve.py); the JSON sidecar; unsupported backbones
and options are clear errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_model, random_checkpoint

from chexnet_pl.data.images import read_gray
from chexnet_pl.data.transforms import area_resize
from chexnet_pl.labels import class_names
from chexnet_pl.models.module import CheXNetModule
from chexnet_pl.serving.backends import OnnxBackend, load_backend
from chexnet_pl.serving.export import PARITY_TOLERANCE, export_checkpoint, runner
from chexnet_pl.serving.served_model import ServedModel, ServingError
from chexnet_pl.visualization.heatmaps import class_activation_maps

REPO = Path(__file__).resolve().parents[1]
SIZE = 64


def nih_batch(nih_sample: Path, count: int) -> torch.Tensor:
    """The first ``count`` real NIH images (RGBA ones included), decoded and resized as served."""
    paths = sorted((nih_sample / "images").glob("*.png"))[:count]
    return torch.stack([torch.from_numpy(area_resize(read_gray(p), SIZE))[None] for p in paths])


@pytest.fixture(scope="module")
def densenet_run(tmp_path_factory) -> Path:
    """A training run's layout: checkpoints/best.ckpt and the evaluation's aucs.csv beside it."""
    run = tmp_path_factory.mktemp("densenet_run")
    random_checkpoint(run / "checkpoints" / "best.ckpt", "densenet121", SIZE)
    names = class_names()
    pd.DataFrame(
        {"auroc": 0.8, "threshold": np.linspace(0.2, 0.7, len(names))},
        index=pd.Index(names, name="class"),
    ).to_csv(run / "aucs.csv")
    return run


@pytest.fixture(scope="module")
def densenet_onnx(densenet_run) -> Path:
    """``python -m chexnet_pl.export ... cams=true``, the command as a user runs it (~20-40 s)."""
    out = densenet_run / "export" / "chexnet.onnx"
    result = subprocess.run(
        [sys.executable, "-m", "chexnet_pl.export", f"ckpt={densenet_run}/checkpoints/best.ckpt",
         "format=onnx", "cams=true", f"out={out}", f"hydra.run.dir={densenet_run}/hydra"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def reference(checkpoint: Path, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    """The LightningModule's own probabilities and CAMs (not the exported wrapper's)."""
    model = CheXNetModule.load_from_checkpoint(checkpoint).eval()
    probabilities = model.predict_proba(images).numpy()
    cams = class_activation_maps(model, images).numpy() if model.net.cam_available else None
    return probabilities, cams


@pytest.mark.slow
def test_onnx_export_equals_pytorch_on_real_images(densenet_run, densenet_onnx, nih_sample):
    images = nih_batch(nih_sample, 6)
    expected_probabilities, expected_cams = reference(
        densenet_run / "checkpoints/best.ckpt", images
    )
    run = runner("onnx", densenet_onnx)
    # The batch dimension is symbolic: 6 images at once and 1 at a time give the same answers.
    probabilities, cams = run(images.numpy())
    assert probabilities.shape == (6, 15) and cams.shape == (6, 15, SIZE, SIZE)
    assert np.abs(probabilities - expected_probabilities).max() < PARITY_TOLERANCE
    assert np.abs(cams - expected_cams).max() < PARITY_TOLERANCE
    single, _ = run(images[:1].numpy())
    assert np.abs(single - expected_probabilities[:1]).max() < PARITY_TOLERANCE
    assert probabilities.std() > 1e-3  # not a constant output that matches trivially


@pytest.mark.slow
def test_onnx_sidecar_names_classes_thresholds_and_checkpoint(densenet_run, densenet_onnx):
    card = json.loads(Path(f"{densenet_onnx}.json").read_text())
    checkpoint = densenet_run / "checkpoints" / "best.ckpt"
    assert card["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert card["classes"] == class_names()
    assert card["image_size"] == SIZE and card["format"] == "onnx"
    assert card["outputs"] == ["probabilities", "cams"]
    assert card["preprocessing"]["input"] == {
        "name": "images", "dtype": "uint8", "shape": ["batch", 1, SIZE, SIZE],
    }  # fmt: skip
    # Found beside the checkpoint, in its run folder, as train writes it.
    assert card["thresholds_source"] == str(densenet_run / "aucs.csv")
    expected = np.linspace(0.2, 0.7, 15)
    assert np.allclose([card["thresholds"][n] for n in class_names()], expected)
    assert card["max_abs_difference_vs_pytorch"]["probabilities"] < PARITY_TOLERANCE


@pytest.mark.slow
def test_an_onnx_file_serves_only_the_checkpoint_it_came_from(
    densenet_run, densenet_onnx, tmp_path
):
    backend, card = load_backend(densenet_run / "checkpoints/best.ckpt", "onnx", onnx=densenet_onnx)
    assert isinstance(backend, OnnxBackend) and backend.has_cams and card["heatmaps"] == "cam"
    other = random_checkpoint(tmp_path / "other.ckpt", "densenet121", SIZE)
    data = torch.load(other, weights_only=True)  # another checkpoint: other weights, other hash
    data["state_dict"]["net.classifier.bias"] += 1.0
    torch.save(data, other)
    with pytest.raises(ServingError, match="SHA-256"):
        load_backend(other, "onnx", onnx=densenet_onnx)


@pytest.mark.parametrize(
    ("backbone", "fmt", "cams"),
    [("densenet121", "torchscript", True), ("resnet18", "torchscript", False)],
)  # fmt: skip
def test_export_equals_pytorch_on_real_images(backbone, fmt, cams, tmp_path, nih_sample):
    checkpoint = random_checkpoint(tmp_path / "checkpoints" / "last.ckpt", backbone, SIZE)
    out = export_checkpoint(checkpoint, fmt, cams=cams)
    assert out == checkpoint.with_suffix(".onnx" if fmt == "onnx" else ".pt")
    card = json.loads(Path(f"{out}.json").read_text())
    assert card["thresholds_source"].startswith("none found")  # no aucs.csv anywhere near
    assert set(card["thresholds"].values()) == {0.5}
    images = nih_batch(nih_sample, 5)
    expected_probabilities, expected_cams = reference(checkpoint, images)
    outputs = runner(fmt, out)(images.numpy())
    assert len(outputs) == (2 if cams else 1)
    assert np.abs(outputs[0] - expected_probabilities).max() < PARITY_TOLERANCE
    if cams:
        assert np.abs(outputs[1] - expected_cams).max() < PARITY_TOLERANCE


@pytest.mark.parametrize("backbone", ["alexnet", "convnext_tiny"])
def test_cams_of_a_head_without_cam_is_a_clear_error(backbone):
    with pytest.raises(ServingError, match=f"cams=true needs .*{backbone}'s head is"):
        ServedModel(make_model(backbone=backbone), cams=True)


def test_unknown_format_and_too_small_image_are_clear_errors(densenet_run):
    checkpoint = densenet_run / "checkpoints" / "best.ckpt"
    with pytest.raises(
        ServingError, match=r"format='tflite'; use one of \['onnx', 'torchscript'\]"
    ):
        export_checkpoint(checkpoint, "tflite")
    with pytest.raises(
        ServingError, match="densenet121 cannot take 8 px images.*larger image_size="
    ):
        export_checkpoint(checkpoint, "torchscript", image_size=8)
    assert not list(checkpoint.parent.glob("best.pt*"))


@pytest.mark.slow  # launches a process
def test_export_command_reports_a_bad_option_in_one_line(tmp_path):
    checkpoint = random_checkpoint(tmp_path / "r.ckpt", "resnet18", SIZE)
    result = subprocess.run(
        [sys.executable, "-m", "chexnet_pl.export", f"ckpt={checkpoint}", "format=tflite",
         f"hydra.run.dir={tmp_path}/hydra"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert "format='tflite'; use one of" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
