"""Reliability diagrams: one small panel per class, observed frequency against mean predicted
probability in equal-mass bins, before (and after) calibration."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402

from chexnet_pl.evaluation.plots import save_figure  # noqa: E402
from chexnet_pl.labels import labelled  # noqa: E402


def plot_reliability(
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    path: Path,
    bins: int = 15,
    ece: pd.DataFrame | None = None,
    calibrated: np.ndarray | None = None,
    calibrated_ece: pd.DataFrame | None = None,
    method: str = "",
    title: str = "",
) -> Path:
    """``reliability.png``. Each panel: the diagonal (perfect calibration), the curve of the raw
    probabilities (blue) and, when given, of the calibrated ones (orange); grey bars at the
    bottom show where the raw predictions lie (images per tenth, the fullest tenth 0.25 high)."""
    columns = 5
    rows = math.ceil(len(class_names) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.ravel()[len(class_names) :]:
        ax.axis("off")
    for j, (ax, name) in enumerate(zip(axes.ravel(), class_names, strict=False)):
        known = labelled(labels[:, j])  # each panel: the images whose label is known
        positive = labels[known, j] > 0.5
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
        counts, edges = np.histogram(np.clip(scores[:, j], 0, 1), bins=10, range=(0, 1))
        ax.bar(edges[:-1], counts / max(counts.max(), 1) * 0.25, width=0.1, align="edge",
               color="lightgrey", zorder=0)  # fmt: skip
        heading = name.replace("_", " ")
        if positive.all() or not positive.any():
            ax.text(0.5, 0.5, "undefined\n(no positives\nor negatives)", ha="center", va="center")
        else:
            curves = [("raw", scores[known, j], "tab:blue", ece)]
            if calibrated is not None:
                curves.append(
                    (method or "calibrated", calibrated[known, j], "tab:orange", calibrated_ece)
                )
            values = []
            for label, probabilities, colour, table in curves:
                observed, predicted = calibration_curve(
                    positive, np.clip(probabilities, 0, 1), n_bins=bins, strategy="quantile"
                )
                ax.plot(predicted, observed, "o-", color=colour, markersize=3, linewidth=1,
                        label=label)  # fmt: skip
                if table is not None and name in table.index:
                    values.append(f"{table.at[name, 'ece_equal_mass']:.3f}")
            if values:
                heading += f"\nECE {' → '.join(values)}"
            ax.legend(loc="upper left", fontsize=7)
        ax.set_title(heading, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("mean predicted probability", fontsize=7)
        ax.set_ylabel("observed frequency", fontsize=7)
        ax.tick_params(labelsize=7)
    return save_figure(figure, path, title)
