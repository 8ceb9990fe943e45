"""Overlays on the full-resolution X-ray and prediction tables, as CSV and PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from chexnet_pl.evaluation.plots import save_figure as write_figure  # noqa: E402


def upsample(heatmap: np.ndarray | torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """A low-resolution map → ``shape`` (the original X-ray's), bilinear."""
    tensor = torch.as_tensor(np.asarray(heatmap, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()


def overlay(
    gray: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, colormap: str = "jet"
) -> np.ndarray:
    """The colour-mapped heat map blended on the gray X-ray: H×W×3 uint8 at the X-ray's resolution."""
    heat = upsample(heatmap, gray.shape) if heatmap.shape != gray.shape else heatmap
    colours = matplotlib.colormaps[colormap](np.clip(heat, 0, 1))[..., :3]
    base = np.repeat((gray.astype(np.float32) / 255.0)[..., None], 3, axis=-1)
    return (np.clip((1 - alpha) * base + alpha * colours, 0, 1) * 255 + 0.5).astype(np.uint8)


def prediction_table(
    probabilities: Sequence[float],
    class_names: Sequence[str],
    truth: Sequence[float] | None = None,
    thresholds: Sequence[float] | float = 0.5,
) -> pd.DataFrame:
    """Every finding with its probability, ground truth (when known) and a mark where they
    disagree at the operating threshold, most probable first."""
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (len(class_names),))
    table = pd.DataFrame(
        {"finding": list(class_names), "probability": np.asarray(probabilities, dtype=np.float64)}
    )
    table["threshold"] = thresholds
    table["predicted"] = table["probability"] >= table["threshold"]
    if truth is not None:
        table["truth"] = np.asarray(truth) > 0.5
        table["disagree"] = np.where(table["predicted"] != table["truth"], "✗", "")
    return table.sort_values("probability", ascending=False, kind="stable").reset_index(drop=True)


def save_figure(
    path: Path,
    gray: np.ndarray,
    heatmap: np.ndarray,
    finding: str,
    probability: float,
    table: pd.DataFrame,
    title: str = "",
) -> Path:
    """Overlay (titled with the finding and its probability) beside the rendered prediction table."""
    figure, (left, right) = plt.subplots(
        1, 2, figsize=(12, 6), gridspec_kw={"width_ratios": [1, 0.9]}
    )
    left.imshow(overlay(gray, heatmap))
    left.set_title(f"{finding.replace('_', ' ')}: p = {probability:.3f}", fontsize=12)
    left.axis("off")
    right.axis("off")
    shown = table.copy()
    shown["probability"] = shown["probability"].map(lambda v: f"{v:.3f}")
    columns = [c for c in ("finding", "probability", "truth", "disagree") if c in shown]
    if "truth" in shown:
        shown["truth"] = shown["truth"].map({True: "yes", False: ""})
    cells = shown[columns].astype(str).to_numpy()
    rendered = right.table(cellText=cells, colLabels=columns, loc="center", cellLoc="left")
    rendered.auto_set_font_size(False)
    rendered.set_fontsize(9)
    rendered.scale(1, 1.3)
    if "disagree" in shown:
        for row, mark in enumerate(shown["disagree"], start=1):
            if mark:
                for column in range(len(columns)):
                    rendered[row, column].set_facecolor("#ffd6d6")
    return write_figure(figure, path, title, title_size=10)
