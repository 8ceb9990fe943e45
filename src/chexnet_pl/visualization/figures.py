"""Overlays on the full-resolution X-ray and prediction tables, as CSV and PNG.

The heat map is drawn with a perceptual colour map (``inferno``: brightness grows with the value,
readable in gray print and by colour-blind readers) and only where it is in its top
``SHOWN_TOP_PERCENT`` per cent, so the anatomy under the rest stays visible; the figure's colour
bar gives the map's scale (each map is scaled to [0, 1]) and marks where the shown part starts.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import cv2  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from chexnet_pl.files import save_figure as write_figure  # noqa: E402

COLORMAP = "inferno"
SHOWN_TOP_PERCENT = 20.0  # of the map's pixels: the rest of the X-ray is shown as it is
OPACITY = 0.55
DISPLAY_SIDE = 1024  # px: the overlay is drawn at about this size in the figure (200 dpi)
TABLE_COLUMNS = ("finding", "probability", "threshold", "above", "truth", "disagree", "note")
# One meaning per colour, here and on the serve page: blue = above its threshold, pink =
# disagrees with the ground truth (known only here).
ABOVE_COLOUR, DISAGREE_COLOUR = "#dbeafe", "#ffd6d6"
UNDEFINED = "undefined"  # a threshold that could not be chosen: no verdict


def upsample(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A low-resolution map → ``shape`` (the original X-ray's), bilinear (pixel centres aligned,
    as torch's ``interpolate(align_corners=False)``; OpenCV, so predicting needs no torch here)."""
    heat = np.asarray(heatmap, dtype=np.float32)
    return cv2.resize(heat, (int(shape[1]), int(shape[0])), interpolation=cv2.INTER_LINEAR)


def shown_from(heatmap: np.ndarray, top_percent: float = SHOWN_TOP_PERCENT) -> float:
    """The map value from which the map is drawn: its (100 - top_percent)th percentile (inf for
    a flat map, which is not drawn)."""
    heat = np.asarray(heatmap, dtype=np.float32)
    return (
        float(np.percentile(heat, 100.0 - top_percent)) if heat.max() > heat.min() else float("inf")
    )


def drawn(heatmap: np.ndarray, top_percent: float = SHOWN_TOP_PERCENT) -> np.ndarray:
    """Where the map is drawn: above ``shown_from`` (at most ``top_percent`` of the pixels; a map
    that is mostly its minimum is drawn only where it rises above it)."""
    heat = np.asarray(heatmap, dtype=np.float32)
    cut = shown_from(heat, top_percent)
    above = heat > cut
    return above if above.any() or not np.isfinite(cut) else heat >= cut


def overlay(
    gray: np.ndarray,
    heatmap: np.ndarray,
    top_percent: float = SHOWN_TOP_PERCENT,
    opacity: float = OPACITY,
    colormap: str = COLORMAP,
) -> np.ndarray:
    """The X-ray (H×W×3 uint8 at its resolution) with the colour-mapped heat map blended in where
    the map is in its top ``top_percent`` per cent; elsewhere the gray pixels are unchanged."""
    heat = upsample(heatmap, gray.shape) if heatmap.shape != gray.shape else heatmap
    heat = np.clip(heat, 0, 1)
    colours = matplotlib.colormaps[colormap](heat)[..., :3]
    base = np.repeat((gray.astype(np.float32) / 255.0)[..., None], 3, axis=-1)
    alpha = np.where(drawn(heat, top_percent), opacity, 0.0)[..., None]
    return (np.clip((1 - alpha) * base + alpha * colours, 0, 1) * 255 + 0.5).astype(np.uint8)


def prediction_table(
    probabilities: Sequence[float],
    class_names: Sequence[str],
    truth: Sequence[float] | None = None,
    thresholds: Sequence[float] | float = 0.5,
    notes: Sequence[str] = (),
) -> pd.DataFrame:
    """Every finding with its probability, its operating threshold, whether it is above it, the
    ground truth (when known) and a mark where they disagree, most probable first — the table of
    ``predict``, ``visualize`` and the web page. A NaN threshold (undefined: not chosen on
    validation) gives no verdict: ``above_threshold`` is missing (pd.NA), never a 0.5 call.
    ``notes``: per class, why its threshold is undefined or degenerate ("" where it is usable)."""
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (len(class_names),))
    table = pd.DataFrame(
        {"finding": list(class_names), "probability": np.asarray(probabilities, dtype=np.float64)}
    )
    table["threshold"] = thresholds
    undefined = np.isnan(thresholds)
    above = pd.array(table["probability"].to_numpy() >= np.nan_to_num(thresholds), dtype="boolean")
    above[undefined] = pd.NA
    table["above_threshold"] = above
    table["threshold_note"] = list(notes) if len(notes) else [""] * len(class_names)
    if truth is not None:  # NaN: the label is unknown (uncertain, not mentioned): NA, not False
        values = np.asarray(truth, dtype=np.float64)
        known = ~np.isnan(values)
        table["truth"] = pd.array(np.where(known, values > 0.5, False), dtype="boolean")
        table.loc[~known, "truth"] = pd.NA
        differs = known & (table["above_threshold"] != (values > 0.5)).fillna(False).to_numpy(bool)
        table["disagree"] = np.where(differs, "✗", "")
    return table.sort_values("probability", ascending=False, kind="stable").reset_index(drop=True)


def table_text(table: pd.DataFrame) -> pd.DataFrame:
    """The table as it is printed and drawn: 3 decimals, ``above`` yes/no, truth yes/no/unknown."""
    shown = pd.DataFrame({"finding": table["finding"].str.replace("_", " ")})
    shown["probability"] = table["probability"].map(lambda v: f"{v:.3f}")
    shown["threshold"] = table["threshold"].map(lambda v: UNDEFINED if pd.isna(v) else f"{v:.3f}")
    shown["above"] = [
        UNDEFINED if pd.isna(v) else ("yes" if v else "no") for v in table["above_threshold"]
    ]
    if "truth" in table:
        shown["truth"] = [
            "unknown" if value is pd.NA else "yes" if value else "no" for value in table["truth"]
        ]
        shown["disagree"] = table["disagree"]
    if "threshold_note" in table and table["threshold_note"].astype(bool).any():
        shown["note"] = table["threshold_note"]
    return shown


def overlay_figure(
    gray: np.ndarray,
    heatmap: np.ndarray,
    finding: str,
    probability: float,
    table: pd.DataFrame,
    title: str = "",
    thresholds_note: str = "",
    model_line: str = "",
):
    """The overlay (titled with the finding, its probability and threshold) over its colour bar,
    beside the rendered prediction table (rows above their threshold bold on blue, as on the
    serve page; disagreements with the ground truth on pink); returns the matplotlib figure."""
    figure = plt.figure(figsize=(13, 7))
    grid = figure.add_gridspec(2, 2, width_ratios=[1, 1], height_ratios=[1, 0.035], hspace=0.12,
                               wspace=0.05, left=0.02, right=0.99, top=0.9,
                               bottom=0.12 if model_line else 0.08)  # fmt: skip
    left, bar = figure.add_subplot(grid[0, 0]), figure.add_subplot(grid[1, 0])
    right = figure.add_subplot(grid[:, 1])
    # Drawn at the size the figure shows it (about 1,250 px a side at 200 dpi): the same picture as
    # the full resolution, at a fraction of the colour mapping and drawing.
    scale = min(1.0, DISPLAY_SIDE / max(gray.shape))
    if scale < 1.0:
        size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    heat = upsample(heatmap, gray.shape) if heatmap.shape != gray.shape else heatmap
    left.imshow(overlay(gray, heat), interpolation="antialiased")
    row = table[table["finding"] == finding]
    threshold = ""
    if len(row):
        value = row["threshold"].iloc[0]
        threshold = f", threshold {UNDEFINED if pd.isna(value) else f'{value:.3f}'}"
        note = row["threshold_note"].iloc[0] if "threshold_note" in row else ""
        threshold += f" ({note})" if note else ""
    left.set_title(f"{finding.replace('_', ' ')}: p = {probability:.3f}{threshold}", fontsize=12)
    left.axis("off")
    mappable = plt.cm.ScalarMappable(cmap=COLORMAP, norm=matplotlib.colors.Normalize(0, 1))
    colorbar = figure.colorbar(mappable, cax=bar, orientation="horizontal")
    bar.set_label("<colorbar>")  # as matplotlib names the colour bars it makes itself
    heat = np.clip(heat, 0, 1)
    mask = drawn(heat)
    if mask.any():
        cut = float(heat[mask].min())
        shown = f"drawn from {cut:.2f} (at most its top {SHOWN_TOP_PERCENT:.0f}%)"
        bar.axvspan(0, cut, color="white", alpha=0.75)
        bar.axvline(cut, color="black", linewidth=1)
    else:
        shown = "flat: not drawn"
    colorbar.set_label(
        f"heat map of {finding.replace('_', ' ')}, scaled to 0–1; {shown}", fontsize=9
    )
    colorbar.ax.tick_params(labelsize=8)
    right.axis("off")
    cells = table_text(table)
    columns = [c for c in TABLE_COLUMNS if c in cells]
    widths = {"finding": 0.34, "probability": 0.16, "threshold": 0.15, "above": 0.1,
              "truth": 0.1, "disagree": 0.12}  # fmt: skip
    if "note" in cells:  # a threshold undefined or flagged: room for why, the rest narrower
        widths = {"finding": 0.22, "probability": 0.1, "threshold": 0.11, "above": 0.09,
                  "truth": 0.07, "disagree": 0.07, "note": 0.34}  # fmt: skip
        cells["note"] = cells["note"].str.split(" (", regex=False).str[0]
        cells.loc[cells["above"] == UNDEFINED, "above"] = "—"  # the note says why: no verdict
    rendered = right.table(cellText=cells[columns].to_numpy(), colLabels=columns, loc="center",
                           cellLoc="left", colWidths=[widths[c] for c in columns])  # fmt: skip
    rendered.auto_set_font_size(False)
    rendered.set_fontsize(8 if "note" in cells else 9)
    rendered.scale(1, 1.3)
    for position, above in enumerate(table["above_threshold"], start=1):
        if not pd.isna(above) and above:
            for column in range(len(columns)):
                rendered[position, column].get_text().set_fontweight("bold")
                rendered[position, column].set_facecolor(ABOVE_COLOUR)
    key = "bold on blue: above its threshold"
    if "disagree" in cells:
        key += "; pink: disagrees with the ground truth"
        for position, mark in enumerate(cells["disagree"], start=1):
            if mark:
                for column in range(len(columns)):
                    rendered[position, column].set_facecolor(DISAGREE_COLOUR)
    right.text(0.0, 0.02, key, transform=right.transAxes, fontsize=8, ha="left", va="bottom")
    if thresholds_note:
        wrapped = textwrap.fill(f"thresholds: {thresholds_note}", 100)
        right.set_title(wrapped, fontsize=8, loc="left")
    if title:
        figure.suptitle(title, fontsize=10)
    if model_line:
        figure.text(0.01, 0.005, f"model: {model_line}", fontsize=8, ha="left", va="bottom")
    return figure


def save_overlay(figure, path: Path) -> Path:
    """``overlay_figure``'s figure written as a PNG (laid out by its own grid: drawn once)."""
    return write_figure(figure, path, tight=False)
