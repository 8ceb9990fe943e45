"""Reliability diagrams: per class, observed frequency against mean predicted probability in
equal-mass bins, before (and after) calibration, zoomed to where the predictions are.

Each bin holds at least ``MIN_BIN_IMAGES`` images (fewer bins than ``evaluation.calibration_bins``
for a small split: 17 images make one bin, not 15 bins of one image zig-zagging between 0 and 1);
each point carries its 95% Wilson interval, and the panel says how many images each bin holds.

Most probabilities of a 14-finding model are small (prevalences are 0.2–18%), so fixed 0–1 axes
put every curve in a corner. Each panel is square and zoomed to the same range on both axes —
up to a little above the largest of the binned values and the 99th percentile of the
predictions — so the diagonal (perfect calibration) stays the diagonal. Under it, on its own
axis, a histogram of the raw predictions over that range, labelled in images; the title gives
the class and its ECE (equal-mass bins), before → after calibration.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from chexnet_pl.evaluation.plots import figure_legend  # noqa: E402
from chexnet_pl.files import save_figure  # noqa: E402
from chexnet_pl.label_sets import labelled  # noqa: E402

COLUMNS = 5
RAW, CALIBRATED = "tab:blue", "tab:orange"
MIN_BIN_IMAGES = 10  # a bin's observed frequency from fewer images is mostly noise


def diagram_bins(images: int, bins: int, min_images: int = MIN_BIN_IMAGES) -> int:
    """How many equal-mass bins the diagram draws: at most ``bins``, each of at least
    ``min_images`` images (one bin when there are fewer)."""
    return max(1, min(int(bins), int(images) // min_images))


def wilson_interval(
    successes: np.ndarray, trials: np.ndarray, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a proportion (Wilson 1927): good at 0 and 1 and for small
    counts, where the normal approximation's interval leaves [0, 1] or has zero width."""
    from scipy.stats import norm

    k, n = np.asarray(successes, np.float64), np.asarray(trials, np.float64)
    z = float(norm.ppf(0.5 + confidence / 2))
    share = k / n
    denominator = 1 + z**2 / n
    centre = (share + z**2 / (2 * n)) / denominator
    half = z / denominator * np.sqrt(share * (1 - share) / n + z**2 / (4 * n**2))
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def binned(
    probabilities: np.ndarray, positive: np.ndarray, bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean predicted, observed frequency, images) per equal-mass bin, ``diagram_bins`` of them."""
    order = np.argsort(probabilities, kind="stable")
    chunks = [
        c for c in np.array_split(order, min(diagram_bins(len(order), bins), len(order))) if len(c)
    ]
    predicted = np.array([probabilities[c].mean() for c in chunks])
    observed = np.array([positive[c].mean() for c in chunks])
    return predicted, observed, np.array([len(c) for c in chunks])


def zoom_limit(probabilities: Sequence[np.ndarray], points: Sequence[np.ndarray]) -> float:
    """The upper end of both axes: 10% above the largest binned value or 99th percentile of the
    predictions, at least 0.05, at most 1."""
    largest = max(
        [float(np.percentile(p, 99)) for p in probabilities] + [float(np.max(v)) for v in points]
    )
    return float(min(1.0, max(0.05, largest * 1.1)))


def reliability_figure(
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    bins: int = 15,
    ece: pd.DataFrame | None = None,
    calibrated: np.ndarray | None = None,
    calibrated_ece: pd.DataFrame | None = None,
    method: str = "",
    title: str = "",
) -> plt.Figure:
    """The figure: per class a curve panel over a histogram panel (sharing the x-axis)."""
    rows = -(-len(class_names) // COLUMNS)
    figure = plt.figure(figsize=(3.3 * COLUMNS, 4.0 * rows + 0.6))
    outer = figure.add_gridspec(rows, COLUMNS, hspace=0.45, wspace=0.38, top=0.9, left=0.05,
                                right=0.98, bottom=0.05)  # fmt: skip
    for j, name in enumerate(class_names):
        cell = outer[j // COLUMNS, j % COLUMNS].subgridspec(2, 1, height_ratios=[3, 1], hspace=0.08)
        curve_ax = figure.add_subplot(cell[0])
        histogram_ax = figure.add_subplot(cell[1], sharex=curve_ax)
        known = labelled(labels[:, j])  # each panel: the images whose label is known
        _panel(curve_ax, histogram_ax, scores[known, j], labels[known, j] > 0.5, name, bins, ece,
               None if calibrated is None else calibrated[known, j], calibrated_ece, method)  # fmt: skip
    figure_legend(
        figure, figure.axes, 0.965, last=["perfectly calibrated"]
    )  # one legend: every panel draws the same curves
    if title:
        figure.suptitle(title, y=0.995)
    return figure


def _panel(curve_ax, histogram_ax, raw, positive, name, bins, ece, calibrated, calibrated_ece,
           method) -> None:  # fmt: skip
    raw = np.clip(raw, 0, 1)
    heading = name.replace("_", " ")
    histogram_ax.set_xlabel("mean predicted probability", fontsize=8)
    histogram_ax.set_ylabel("images", fontsize=8)
    histogram_ax.tick_params(labelsize=7)
    histogram_ax.yaxis.set_major_locator(MaxNLocator(nbins=3, integer=True))  # whole images
    curve_ax.set_ylabel("observed frequency", fontsize=8)
    curve_ax.tick_params(labelsize=7, labelbottom=False)
    if positive.all() or not positive.any():
        curve_ax.text(0.5, 0.5, "undefined\n(no positives\nor negatives)", ha="center",
                      va="center", transform=curve_ax.transAxes)  # fmt: skip
        curve_ax.set_title(heading, fontsize=9)
        return
    curves = [("raw", raw, RAW, ece)]
    if calibrated is not None:
        curves.append((f"calibrated ({method})" if method else "calibrated",
                       np.clip(calibrated, 0, 1), CALIBRATED, calibrated_ece))  # fmt: skip
    points, values = [], []
    for label, probabilities, colour, table in curves:
        predicted, observed, counts = binned(probabilities, positive, bins)
        low, high = wilson_interval(observed * counts, counts)
        bars = np.maximum(0.0, [observed - low, high - observed])  # rounding: never below 0
        curve_ax.errorbar(predicted, observed, yerr=bars, fmt="o-",
                          color=colour, markersize=3, linewidth=1, elinewidth=0.8, capsize=1.5,
                          label=label)  # fmt: skip
        points += [predicted, observed]
        if table is not None and name in table.index:
            values.append(f"{table.at[name, 'ece_equal_mass']:.3f}")
    limit = zoom_limit([c[1] for c in curves], points)
    curve_ax.plot([0, limit], [0, limit], color="grey", linestyle=":", linewidth=0.9,
                  label="perfectly calibrated")  # fmt: skip
    curve_ax.set_xlim(0, limit)
    curve_ax.set_ylim(0, limit)
    sizes = (
        f"{counts.min():,}"
        if counts.min() == counts.max()
        else f"{counts.min():,}–{counts.max():,}"
    )
    curve_ax.text(0.03, 0.97, f"{len(counts)} bin{'s' * (len(counts) > 1)} of {sizes} images\n"
                  "bars: 95% Wilson interval", ha="left", va="top", fontsize=8,
                  transform=curve_ax.transAxes)  # fmt: skip
    outside = int((raw > limit).sum())
    histogram_ax.hist(raw[raw <= limit], bins=30, range=(0, limit), color="lightgrey",
                      edgecolor="grey", linewidth=0.3)  # fmt: skip
    if outside:
        histogram_ax.text(0.98, 0.9, f"+{outside} above {limit:.2f}", ha="right", va="top",
                          fontsize=7, transform=histogram_ax.transAxes)  # fmt: skip
    if values:
        heading += f"\nECE {' → '.join(values)}"
    curve_ax.set_title(heading, fontsize=9)


def write_reliability(figure: plt.Figure, path: Path) -> Path:
    """``reliability_figure``'s figure as ``reliability.png`` (laid out by its own grid)."""
    return save_figure(figure, path, tight=False)
