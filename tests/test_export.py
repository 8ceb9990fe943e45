"""Export as served (uint8 in, probabilities and CAMs out): ONNX Runtime (CPU) and TorchScript equal
the PyTorch module within 1e-4 on the real NIH sample images, for DenseNet-121 and ResNet-18 (ONNX
Runtime on ResNet-18 and on AlexNet: tests/test_serve.py); the JSON sidecar; unsupported backbones
and options are clear errors."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_model, random_checkpoint

from chexnet_pl.data.images import read_gray
from chexnet_pl.data.nih_table import class_names
from chexnet_pl.data.transforms import area_resize
from chexnet_pl.errors import ServingError
from chexnet_pl.models.module import CheXNetModule
from chexnet_pl.serving.backends import OnnxBackend, load_backend
from chexnet_pl.serving.export import PARITY_TOLERANCE, export_checkpoint, runner
from chexnet_pl.serving.served_model import ServedModel
from chexnet_pl.serving.sidecar import read_sidecar
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
    cams = class_activation_maps(model.net, images).numpy() if model.net.cam_available else None
    return probabilities, cams


@pytest.mark.slow
def test_onnx_export_equals_pytorch_on_real_images(densenet_run, densenet_onnx, nih_sample):
    images = nih_batch(nih_sample, 6)
    expected_probabilities, expected_cams = reference(
        densenet_run / "checkpoints/best.ckpt", images
    )
    run = runner("onnx", densenet_onnx)
    # The batch dimension is symbolic: 6 images at once and 1 at a time give the same answers.
    probabilities, cams, features = run(images.numpy())
    assert probabilities.shape == (6, 15) and cams.shape == (6, 15, SIZE, SIZE)
    assert features.shape == (6, 1024)  # DenseNet-121's pooled embedding
    assert np.abs(probabilities - expected_probabilities).max() < PARITY_TOLERANCE
    assert np.abs(cams - expected_cams).max() < PARITY_TOLERANCE
    single = run(images[:1].numpy())[0]
    assert np.abs(single - expected_probabilities[:1]).max() < PARITY_TOLERANCE
    assert probabilities.std() > 1e-3  # not a constant output that matches trivially


@pytest.mark.slow
def test_onnx_sidecar_names_classes_thresholds_and_checkpoint(densenet_run, densenet_onnx):
    card = json.loads(Path(f"{densenet_onnx}.json").read_text())
    checkpoint = densenet_run / "checkpoints" / "best.ckpt"
    assert card["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert card["classes"] == class_names()
    assert card["image_size"] == SIZE and card["format"] == "onnx"
    assert card["outputs"] == ["probabilities", "cams", "features"]
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
        ServedModel(make_model(backbone=backbone).net, cams=True)


def test_unknown_format_and_too_small_image_are_clear_errors(densenet_run):
    checkpoint = densenet_run / "checkpoints" / "best.ckpt"
    with pytest.raises(
        ServingError, match=r"format='tflite'; use one of \['onnx', 'safetensors', 'torchscript'\]"
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
    assert "format='tflite' is not a valid setting; use one of" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


# -- destinations and interrupted exports (issue 23) ----------------------------------------------


@contextmanager
def read_only_folder(path: Path) -> Iterator[Path]:
    """A folder nobody can write to: mode 555, or for root (who ignores modes) ``chattr +i``."""
    path.mkdir(parents=True)
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root and chattr +i fails here: no folder refuses root's writes")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)


@pytest.fixture(scope="module")
def resnet_checkpoint(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("resnet") / "best.ckpt", "resnet18", SIZE)


@pytest.mark.slow
def test_an_unwritable_destination_stops_before_any_work(resnet_checkpoint, tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the destination was checked")

    monkeypatch.setattr("chexnet_pl.checkpoints.runs.load_run", no_work)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with read_only_folder(tmp_path / "read_only") as folder:
        for out, reason in [
            (folder / "m.onnx", "cannot write to"),
            (blocker / "m.onnx", "cannot write to .*a_file \\(it is a file, not a folder\\)"),
        ]:
            with pytest.raises(ServingError, match=f"out={out}: {reason}.*nothing was exported"):
                export_checkpoint(resnet_checkpoint, "onnx", out=out)
        assert not list(folder.iterdir())


def test_out_an_existing_folder_writes_the_default_name_inside(resnet_checkpoint, tmp_path):
    folder = tmp_path / "exports"
    folder.mkdir()
    written = export_checkpoint(resnet_checkpoint, "torchscript", out=folder)
    assert written == folder / "best.pt"
    assert sorted(p.name for p in folder.iterdir()) == ["MODEL_CARD.md", "best.pt", "best.pt.json"]
    card = read_sidecar(written)
    assert card["model_sha256"] == hashlib.sha256(written.read_bytes()).hexdigest()
    assert card["checkpoint"] == "best.ckpt"  # the name: the sidecar travels with the model


@pytest.mark.parametrize(
    ("shift", "refused"), [(2 * PARITY_TOLERANCE, True), (PARITY_TOLERANCE / 2, False)]
)
def test_an_export_that_differs_from_pytorch_is_refused_and_nothing_is_written(
    resnet_checkpoint, tmp_path, monkeypatch, shift, refused
):
    """The parity check made to fire: the exported model's probabilities, as the check reads them
    back, are moved by ``shift``; beyond ``PARITY_TOLERANCE`` the export stops before writing."""
    from chexnet_pl.serving import export

    real_runner = export.runner

    def differing_runner(fmt, model):
        run = real_runner(fmt, model)
        return lambda images: [run(images)[0] + np.float32(shift), *run(images)[1:]]

    monkeypatch.setattr(export, "runner", differing_runner)
    folder = tmp_path / "exports"
    folder.mkdir()
    out = folder / "model.pt"
    if not refused:  # within the tolerance: written, the difference recorded in the sidecar
        export_checkpoint(resnet_checkpoint, "torchscript", out=out)
        recorded = read_sidecar(out)["max_abs_difference_vs_pytorch"]["probabilities"]
        assert recorded == pytest.approx(shift, abs=1e-6)
        return
    with pytest.raises(
        ServingError,
        match=r"the torchscript export of .*best.ckpt differs from PyTorch by 2\.0\de-04 in its "
        r"probabilities \(tolerance 1e-04\); nothing was written",
    ):
        export_checkpoint(resnet_checkpoint, "torchscript", out=out)
    assert list(folder.iterdir()) == []  # no model, no sidecar, no temporary file left


@pytest.mark.slow  # over ~3 s: the slow tier keeps make test-fast under 3 min
def test_an_export_stopped_between_its_two_renames_is_refused_by_readers(
    resnet_checkpoint, tmp_path, monkeypatch
):
    """The sidecar is renamed into place first; stopped before the model follows, the new
    sidecar (96 px) sits beside the old model (64 px), and readers say so instead of trusting it.
    The next export replaces both."""
    out = tmp_path / "model.pt"
    export_checkpoint(resnet_checkpoint, "torchscript", out=out)
    real_replace = os.replace

    def stop_after_the_sidecar(source, target):
        real_replace(source, target)
        if str(target).endswith(".json"):
            raise KeyboardInterrupt  # as SIGINT/SIGTERM-with-handler would, between the renames

    monkeypatch.setattr(os, "replace", stop_after_the_sidecar)
    with pytest.raises(KeyboardInterrupt):
        export_checkpoint(resnet_checkpoint, "torchscript", image_size=96, out=out)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "MODEL_CARD.md",
        "model.pt",
        "model.pt.json",
    ]
    with pytest.raises(
        ServingError, match=r"model.pt.json describes another model than .*model.pt"
    ):
        read_sidecar(out)
    export_checkpoint(resnet_checkpoint, "torchscript", image_size=96, out=out)
    assert read_sidecar(out)["image_size"] == 96


@pytest.mark.slow
def test_export_command_on_bad_destinations(resnet_checkpoint, tmp_path):
    """``chexnet-export`` as a user runs it: a read-only folder is one line and exit 2 before any
    export work; an existing folder gets the default name inside, and the ``.partial`` files a
    killed export left there are named and removed."""
    from conftest import console_script

    def export(out: Path, run: str) -> tuple[int, str]:
        result = subprocess.run(
            [*console_script("export"), f"ckpt={resnet_checkpoint}", f"out={out}",
             f"hydra.run.dir={tmp_path / run}"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        return result.returncode, result.stdout + result.stderr

    with read_only_folder(tmp_path / "read_only") as folder:
        status, output = export(folder, "run1")
        assert status == 2, output[-3000:]
        errors = [line for line in output.splitlines() if "[ERROR]" in line]
        assert len(errors) == 1 and f"out={folder}/best.onnx: cannot write to {folder}" in errors[0]
        assert "Traceback" not in output and "ONNX export took" not in output
        assert not list(folder.iterdir())

    folder = tmp_path / "exports"
    folder.mkdir()
    for stale in ("best.onnx.partial", "best.onnx.json.partial"):
        (folder / stale).write_bytes(b"left by a killed export")
    status, output = export(folder, "run2")
    assert status == 0, output[-3000:]
    assert f"removing {folder / 'best.onnx.partial'}: left by an export that was stopped" in output
    assert sorted(p.name for p in folder.iterdir()) == [
        "MODEL_CARD.md",
        "best.onnx",
        "best.onnx.json",
    ]
    assert "Traceback" not in output
    read_sidecar(folder / "best.onnx")


@pytest.mark.slow
def test_sigterm_between_the_renames_then_serve_refuses_the_pair(resnet_checkpoint, tmp_path):
    """A real SIGTERM, sent by the exporting process to itself right after the sidecar's rename:
    ``chexnet-serve backend=onnx onnx=`` then stops with one line instead of serving a model its
    sidecar does not describe."""
    from conftest import console_script

    out = tmp_path / "model.onnx"
    export_checkpoint(resnet_checkpoint, "onnx", out=out)
    code = (
        "import os, signal\n"
        "real = os.replace\n"
        "def replace(source, target):\n"
        "    real(source, target)\n"
        "    if str(target).endswith('.json'):\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "os.replace = replace\n"
        "from chexnet_pl.serving.export import export_checkpoint\n"
        f"export_checkpoint({str(resnet_checkpoint)!r}, 'onnx', image_size=96, out={str(out)!r})\n"
    )
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=600)
    assert killed.returncode == -signal.SIGTERM
    assert json.loads((tmp_path / "model.onnx.json").read_text())["image_size"] == 96
    result = subprocess.run(
        [*console_script("serve"), f"ckpt={resnet_checkpoint}", "backend=onnx", f"onnx={out}",
         f"hydra.run.dir={tmp_path / 'serve'}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "model.onnx.json describes another model than" in output
    assert "an export was stopped between writing the two" in output
    assert "Traceback" not in output and "Uvicorn running" not in output
