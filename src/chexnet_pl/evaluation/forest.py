"""Forest plots: one row per subgroup (or finding), a point with its confidence interval."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from chexnet_pl.evaluation.plots import save_figure  # noqa: E402


def forest_panel(
    ax,
    labels: Sequence[str],
    values: Sequence[float],
    lows: Sequence[float] | None = None,
    highs: Sequence[float] | None = None,
    reference: float | None = None,
    xlabel: str = "AUROC",
) -> None:
    """Points (with CI bars where given) top to bottom; an undefined value is written as such."""
    values = np.asarray(values, dtype=np.float64)
    y = np.arange(len(labels))[::-1]
    defined = ~np.isnan(values)
    if lows is not None and highs is not None:
        lows, highs = np.asarray(lows, np.float64), np.asarray(highs, np.float64)
        has_ci = defined & ~np.isnan(lows)
        ax.errorbar(
            values[has_ci], y[has_ci],
            xerr=[values[has_ci] - lows[has_ci], highs[has_ci] - values[has_ci]],
            fmt="none", ecolor="tab:blue", elinewidth=1.2, capsize=2,
        )  # fmt: skip
    ax.plot(values[defined], y[defined], "o", color="tab:blue", markersize=4)
    if reference is not None and not np.isnan(reference):
        ax.axvline(reference, color="grey", linestyle=":", linewidth=0.9)
    low_edge = np.nanmin(lows[defined]) if lows is not None and defined.any() else None
    for row in y[~defined]:
        ax.text(
            0.02, row, "undefined", transform=ax.get_yaxis_transform(), va="center", fontsize=7,
            color="tab:red",
        )  # fmt: skip
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_ylim(-0.7, len(labels) - 0.3)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    if low_edge is not None and np.isfinite(low_edge):
        ax.set_xlim(left=min(ax.get_xlim()[0], low_edge - 0.02))


def plot_subgroup_forest(
    table: pd.DataFrame, path: Path, overall: Mapping[str, float] | None = None, title: str = ""
) -> Path:
    """``subgroups_forest.png``: a panel per finding (the mean over the findings first), one row per
    subgroup with its AUROC and CI, a dotted line at the AUROC of all images."""
    rows = table[table["subgroup"] != "gap (max - min)"]
    findings = list(dict.fromkeys(rows["finding"]))
    mean_name = next((f for f in findings if f.startswith("Mean")), None)
    if mean_name:
        findings.remove(mean_name)
        findings.insert(0, mean_name)
    columns = 4
    grid_rows = math.ceil(len(findings) / columns)
    per_panel = rows["finding"].value_counts().max() if len(rows) else 1
    figure, axes = plt.subplots(
        grid_rows, columns, figsize=(4.2 * columns, (0.22 * per_panel + 1.2) * grid_rows),
        squeeze=False,
    )  # fmt: skip
    for ax in axes.ravel()[len(findings) :]:
        ax.axis("off")
    for ax, finding in zip(axes.ravel(), findings, strict=False):
        block = rows[rows["finding"] == finding]
        labels = [f"{a}: {s}" for a, s in zip(block["attribute"], block["subgroup"], strict=True)]
        lows = block["ci_low"] if "ci_low" in block else None
        highs = block["ci_high"] if "ci_high" in block else None
        reference = (overall or {}).get(finding)
        forest_panel(ax, labels, block["auroc"], lows, highs, reference)
        weight = "bold" if finding == mean_name else "normal"
        ax.set_title(finding.replace("_", " "), fontsize=9, fontweight=weight)
    return save_figure(figure, path, title)
