"""``explain``'s model when ``chexnet-export format=onnx cams=true`` wrote an ONNX file of this very
checkpoint beside it: ONNX Runtime gives the probabilities and every class's CAM in one run,
without loading PyTorch — the start-up that makes ``predict`` answer in seconds.

The export is the model as served (``serving/served_model.py``); it was checked against PyTorch
when it was written (probabilities within 1e-4, the sidecar records the largest difference) and
its sidecar names the checkpoint's SHA-256, which must be this checkpoint's (not read again while
the checkpoint's size, modification time and inode are those recorded at export).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chexnet_pl.files import file_identity, file_sha256


@dataclass(frozen=True)
class Export:
    path: Path
    card: dict[str, Any]  # the sidecar: classes, image size, outputs, checkpoint SHA-256, ...


def export_command(checkpoint: Path) -> str:
    return f"chexnet-export ckpt={checkpoint} format=onnx cams=true"


def find_export(checkpoint: str | Path) -> tuple[Export | None, str]:
    """The ONNX export of this checkpoint beside it (``best.ckpt`` → ``best.onnx`` and its sidecar
    ``best.onnx.json``), or None and why it cannot be used."""
    checkpoint = Path(checkpoint).expanduser()
    path = checkpoint.with_suffix(".onnx")
    sidecar = path.with_name(path.name + ".json")
    if not path.is_file() or not sidecar.is_file():
        return None, f"no {path.name} with its {sidecar.name} beside {checkpoint.name}"
    try:
        card = json.loads(sidecar.read_text())
        outputs, classes, size = card["outputs"], card["classes"], int(card["image_size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"{sidecar} is not an export's sidecar ({type(exc).__name__}: {exc})"
    if "cams" not in outputs or not classes or size < 1:
        return None, f"{path.name} has no heat maps (it was exported without cams=true)"
    if not checkpoint.is_file():
        return None, f"{checkpoint} not found"
    if card.get("checkpoint_file") == file_identity(checkpoint):
        return Export(path, card), ""  # the very file that was hashed at export: not read again
    if card.get("checkpoint_sha256") != file_sha256(checkpoint):
        return None, f"{path.name} was exported from another checkpoint (its SHA-256 differs)"
    return Export(path, card), ""


class OnnxExplainer:
    """The exported model on ONNX Runtime's CPU provider; heat maps are its CAM output."""

    method = "cam"

    def __init__(self, export: Export) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # The layout pass of ORT_ENABLE_ALL costs 0.15-0.4 s at every start and saves ~20 ms per
        # image: a command that starts for a few images is faster without it.
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        self.session = onnxruntime.InferenceSession(
            str(export.path), options, providers=["CPUExecutionProvider"]
        )
        self.input = self.session.get_inputs()[0].name
        self.outputs = [output.name for output in self.session.get_outputs()]
        self.class_names = list(export.card["classes"])
        self.image_size = int(export.card["image_size"])
        self._cams: np.ndarray | None = None

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        values = self.session.run(None, {self.input: np.ascontiguousarray(images, dtype=np.uint8)})
        results = dict(zip(self.outputs, values, strict=True))
        self._cams = results["cams"]
        return results["probabilities"]

    def maps(self, images: np.ndarray, classes: list[int]) -> np.ndarray:
        return self._cams[:, classes]
