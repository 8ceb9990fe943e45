"""``predict`` imports what it needs and nothing else: Lightning, torchmetrics, scikit-learn,
albumentations and grad-cam each cost seconds at start-up on a small CPU, and with the
checkpoint's ONNX export beside it, not even torch (``benchmarks/startup.py`` measures the time;
these check the imports and the answers of real runs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import random_checkpoint

from chexnet_pl.serving.export import export_checkpoint

REPO = Path(__file__).resolve().parents[1]
TRAINING = ("pytorch_lightning", "lightning_fabric", "torchmetrics", "sklearn", "albumentations",
            "pytorch_grad_cam")  # fmt: skip


def run_predict(checkpoint: Path, image: Path, out: Path, *overrides: str) -> tuple[str, list[str]]:
    """A real ``predict`` run in a fresh interpreter: its output and the heavy modules it loaded."""
    heavy = (*TRAINING, "torch")
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['chexnet-predict', 'ckpt={checkpoint}', 'image={image}', 'out={out}', "
        f"*{list(overrides)!r}]\n"
        "try:\n    runpy.run_module('chexnet_pl.predict', run_name='__main__')\n"
        "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
        f"print('IMPORTED:' + ','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in reversed(result.stdout.splitlines()) if x.startswith("IMPORTED:"))
    return result.stdout + result.stderr, [
        m for m in line.removeprefix("IMPORTED:").split(",") if m
    ]


@pytest.mark.slow
def test_predict_on_pytorch_and_on_its_onnx_export(tmp_path, nih_sample):
    checkpoint = random_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt", image_size=64)
    image = sorted((nih_sample / "images").glob("*.png"))[0]
    output, imported = run_predict(checkpoint, image, tmp_path / "torch")
    assert imported == ["torch"]  # PyTorch, without the training libraries
    assert "on PyTorch" in output and "format=onnx cams=true" in output  # how to start faster
    export_checkpoint(checkpoint, "onnx", cams=True)  # best.onnx beside best.ckpt
    output, imported = run_predict(checkpoint, image, tmp_path / "onnx")
    assert imported == [] and "on ONNX Runtime (exported from this checkpoint)" in output
    torch_run = pd.read_csv(tmp_path / "torch" / "predictions.csv").iloc[0, 1:].to_numpy(float)
    onnx_run = pd.read_csv(tmp_path / "onnx" / "predictions.csv").iloc[0, 1:].to_numpy(float)
    assert np.abs(torch_run - onnx_run).max() < 1e-4
    tables = [pd.read_csv(tmp_path / b / f"{image.stem}.csv") for b in ("torch", "onnx")]
    assert (
        tables[0]["finding"].tolist() == tables[1]["finding"].tolist()
        or np.abs(np.sort(torch_run) - np.sort(onnx_run)).max() < 1e-4
    )  # the order can swap only between near-equal probabilities
    assert len(list((tmp_path / "onnx").glob(f"{image.stem}_*.png"))) == 1
    # an export of another checkpoint, or a method the export cannot give: PyTorch, said why
    output, imported = run_predict(checkpoint, image, tmp_path / "grad", "method=gradcam")
    assert "torch" in imported and "method=gradcam needs PyTorch" in output
    other = random_checkpoint(tmp_path / "other.ckpt", image_size=64, seed=1)
    (tmp_path / "other.onnx").write_bytes((checkpoint.with_suffix(".onnx")).read_bytes())
    (tmp_path / "other.onnx.json").write_bytes(checkpoint.with_name("best.onnx.json").read_bytes())
    output, imported = run_predict(other, image, tmp_path / "other", "backend=auto")
    assert "other.onnx was exported from another checkpoint" in output and imported == ["torch"]


def test_the_export_is_matched_to_its_checkpoint_without_rereading_it(tmp_path, monkeypatch):
    """The sidecar's SHA-256 is trusted while the checkpoint's size, time and inode are those
    recorded at export; a replaced checkpoint (same size, other bytes) is hashed and refused."""
    import json

    import chexnet_pl.visualization.onnx_explainer as onnx_explainer
    from chexnet_pl.files import file_identity, file_sha256, write_bytes_atomic

    checkpoint = tmp_path / "best.ckpt"
    checkpoint.write_bytes(b"weights" * 1000)
    (tmp_path / "best.onnx").write_bytes(b"onnx")
    card = {"outputs": ["probabilities", "cams"], "classes": ["Edema"], "image_size": 64,
            "checkpoint_sha256": file_sha256(checkpoint), "checkpoint_file": file_identity(checkpoint)}  # fmt: skip
    (tmp_path / "best.onnx.json").write_text(json.dumps(card))
    hashed = []
    monkeypatch.setattr(onnx_explainer, "file_sha256", lambda p: hashed.append(p) or file_sha256(p))
    export, why = onnx_explainer.find_export(checkpoint)
    assert export is not None and why == "" and hashed == []
    write_bytes_atomic(checkpoint, b"WEIGHTS" * 1000)  # a new training's checkpoint, same size
    export, why = onnx_explainer.find_export(checkpoint)
    assert export is None and "exported from another checkpoint" in why and hashed == [checkpoint]
    card["checkpoint_file"] = None  # an export from before the identity was recorded: hashed
    card["checkpoint_sha256"] = file_sha256(checkpoint)
    (tmp_path / "best.onnx.json").write_text(json.dumps(card))
    assert onnx_explainer.find_export(checkpoint)[0] is not None and len(hashed) == 2
