"""Explain images end to end: probabilities, heat maps, overlays and prediction tables on disk."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from chexnet_pl.data.resize import area_resize
from chexnet_pl.visualization.figures import prediction_table, save_figure, upsample
from chexnet_pl.visualization.heatmaps import heatmaps, probabilities_and_cams, resolve_method

if TYPE_CHECKING:
    from chexnet_pl.evaluation.calibration import Calibration

log = logging.getLogger(__name__)


@dataclass
class XRay:
    """One image to explain: its name, the full-resolution 8-bit gray pixels, and labels if known."""

    name: str
    gray: np.ndarray
    truth: np.ndarray | None = None


def model_input(xrays: Sequence[XRay], image_size: int) -> torch.Tensor:
    return torch.stack([torch.from_numpy(area_resize(x.gray, image_size))[None] for x in xrays])


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
) -> pd.DataFrame:
    """For each image write ``<name>.csv`` (prediction table) and ``<name>_<finding>.png``
    (overlay + table) for ``findings`` (default: its ``top_k`` most probable); return the
    probabilities (``Image Index``, ``prob_<Class>``). ``method="auto"``: CAM where the
    backbone's head allows it, else Grad-CAM. With ``calibration`` the probabilities are the
    calibrated ones and every table has a ``calibration`` column saying which.
    ``thresholds_note``: where the thresholds come from, written beside each figure's table."""
    method = resolve_method(model, method)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(model.class_names)
    images = model_input(xrays, image_size)
    cams = None
    if method == "cam":  # probabilities and every class's map from one forward pass
        probabilities, cams = (t.numpy() for t in probabilities_and_cams(model, images))
    else:
        probabilities = model.predict_proba(images).cpu().numpy()
    if calibration is not None:
        probabilities = calibration.apply(probabilities, names).astype(np.float32)
    chosen_per_image = []
    for probs in probabilities:
        if findings:
            chosen_per_image.append([names.index(f) for f in findings])
        else:
            chosen_per_image.append(list(np.argsort(-probs)[:top_k]))
    needed = sorted({k for chosen in chosen_per_image for k in chosen})
    maps = cams[:, needed] if cams is not None else heatmaps(model, images, needed, method).numpy()
    for i, xray in enumerate(xrays):
        table = prediction_table(probabilities[i], names, xray.truth, thresholds)
        if calibration is not None:
            table["calibration"] = calibration.label
        stem = Path(xray.name).stem
        table.to_csv(out_dir / f"{stem}.csv", index=False)
        for k in chosen_per_image[i]:
            heat = upsample(maps[i, needed.index(k)], xray.gray.shape)
            save_figure(
                out_dir / f"{stem}_{names[k]}.png", xray.gray, heat, names[k], float(probabilities[i, k]), table,
                title=f"{xray.name} — {method}"
                + (f" — calibrated: {calibration.label}" if calibration else ""),
                thresholds_note=thresholds_note,
            )  # fmt: skip
    frame = pd.DataFrame(probabilities, columns=[f"prob_{n}" for n in names])
    frame.insert(0, "Image Index", [x.name for x in xrays])
    if calibration is not None:
        frame["calibration"] = calibration.label
    return frame
