"""Explain images end to end: probabilities, heat maps, overlays and prediction tables on disk.

Nothing here imports torch: the model is an ``Explainer`` (PyTorch or ONNX Runtime), so
``predict`` on an exported model starts without loading PyTorch at all."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd

from chexnet_pl.data.resize import area_resize
from chexnet_pl.files import write_csv_atomic
from chexnet_pl.visualization.figures import (
    overlay_figure,
    prediction_table,
    save_overlay,
    upsample,
)

if TYPE_CHECKING:
    from chexnet_pl.evaluation.calibration import Calibration

log = logging.getLogger(__name__)


@dataclass
class XRay:
    """One image to explain: its name, the full-resolution 8-bit gray pixels, and labels if known."""

    name: str
    gray: np.ndarray
    truth: np.ndarray | None = None


class Explainer(Protocol):
    """What ``explain`` needs of a model: its class names, the (resolved) heat-map method,
    probabilities of a uint8 N×1×H×W batch, and heat maps (N×len(classes)×H×W in [0, 1]) of some
    classes of the batch last given to ``probabilities``. ``TorchExplainer`` runs the PyTorch
    network; ``OnnxExplainer`` an ONNX Runtime export of it (what ``predict`` starts fastest with)."""

    class_names: list[str]
    method: str

    def probabilities(self, images: np.ndarray) -> np.ndarray: ...

    def maps(self, images: np.ndarray, classes: list[int]) -> np.ndarray: ...


def model_input(xrays: Sequence[XRay], image_size: int) -> np.ndarray:
    """The model's uint8 N×1×H×W batch (area-resized as in evaluation)."""
    return np.stack([area_resize(x.gray, image_size)[None] for x in xrays])


def explain(
    model,
    xrays: Sequence[XRay],
    image_size: int,
    out_dir: Path,
    method: str = "auto",
    findings: Sequence[str] | None = None,
    thresholds: Sequence[float] | float = 0.5,
    top_k: int = 1,
    calibration: Calibration | None = None,
    thresholds_note: str = "",
    threshold_notes: Sequence[str] = (),
    model_line: str = "",
) -> pd.DataFrame:
    """For each image write ``<name>.csv`` (prediction table) and ``<name>_<finding>.png``
    (overlay + table) for ``findings`` (default: its ``top_k`` most probable); return the
    probabilities (``Image Index``, ``prob_<Class>``). ``model``: an ``Explainer``, or a PyTorch
    model (explained by ``method``; ``auto``: CAM where the backbone's head allows it, else
    Grad-CAM). With ``calibration`` the probabilities are the calibrated ones and every table has
    a ``calibration`` column saying which. ``thresholds_note``: where the thresholds come from,
    written beside each figure's table; ``threshold_notes``: per class, why its threshold is
    undefined (NaN: no verdict) or degenerate; ``model_line``: the model, written on each
    overlay (``model_identity.ModelIdentity.line``)."""
    if not hasattr(model, "maps"):
        from chexnet_pl.visualization.torch_explainer import TorchExplainer

        model = TorchExplainer(model, method)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(model.class_names)
    images = model_input(xrays, image_size)
    probabilities = model.probabilities(images)
    if calibration is not None:
        probabilities = calibration.apply(probabilities, names).astype(np.float32)
    chosen_per_image = []
    for probs in probabilities:
        if findings:
            chosen_per_image.append([names.index(f) for f in findings])
        else:
            chosen_per_image.append(list(np.argsort(-probs)[:top_k]))
    needed = sorted({int(k) for chosen in chosen_per_image for k in chosen})
    maps = model.maps(images, needed)
    for i, xray in enumerate(xrays):
        table = prediction_table(probabilities[i], names, xray.truth, thresholds, threshold_notes)
        if calibration is not None:
            table["calibration"] = calibration.label
        stem = Path(xray.name).stem
        write_csv_atomic(table, out_dir / f"{stem}.csv", index=False)
        for k in chosen_per_image[i]:
            heat = upsample(maps[i, needed.index(int(k))], xray.gray.shape)
            figure = overlay_figure(
                xray.gray, heat, names[k], float(probabilities[i, k]), table,
                title=f"{xray.name} — {model.method}"
                + (f" — calibrated: {calibration.label}" if calibration else ""),
                thresholds_note=thresholds_note, model_line=model_line,
            )  # fmt: skip
            save_overlay(figure, out_dir / f"{stem}_{names[k]}.png")
    frame = pd.DataFrame(probabilities, columns=[f"prob_{n}" for n in names])
    frame.insert(0, "Image Index", [x.name for x in xrays])
    if calibration is not None:
        frame["calibration"] = calibration.label
    return frame
