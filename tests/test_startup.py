"""``predict`` imports what it needs and nothing else: Lightning, torchmetrics, scikit-learn,
albumentations and grad-cam each cost seconds at start-up on a small CPU
(``benchmarks/startup.py`` measures the time; this checks the imports of a real run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import random_checkpoint

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("pytorch_lightning", "lightning_fabric", "torchmetrics", "sklearn", "albumentations",
         "pytorch_grad_cam")  # fmt: skip


@pytest.mark.slow
def test_predict_does_not_import_training_libraries(tmp_path, nih_sample):
    checkpoint = random_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt", image_size=64)
    image = sorted((nih_sample / "images").glob("*.png"))[0]
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['chexnet-predict', 'ckpt={checkpoint}', 'image={image}', 'out={tmp_path / 'out'}']\n"
        "try:\n    runpy.run_module('chexnet_pl.predict', run_name='__main__')\n"
        "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
        f"print('IMPORTED', [m for m in {HEAVY!r} if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "IMPORTED []" in result.stdout, result.stdout[-500:]
    assert (tmp_path / "out" / "predictions.csv").is_file()
