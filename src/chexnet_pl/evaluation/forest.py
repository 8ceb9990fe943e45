"""Forest plots: one row per subgroup (or finding), a point with its confidence interval.

The subgroup forest plot has one panel per finding (the attribute means first), all on one
shared x-axis so findings compare by eye; each row says its subgroup and size (images, and
positives for a finding). Rows too small to compare, or of an unknown subgroup, are grey and
say so; an undefined AUROC is written in red.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from chexnet_pl.files import save_figure  # noqa: E402

COMPARED, LEFT_OUT = "tab:blue", "darkgrey"


def forest_panel(
    ax,
    labels: Sequence[str],
    values: Sequence[float],
    lows: Sequence[float] | None = None,
    highs: Sequence[float] | None = None,
    reference: float | None = None,
    xlabel: str = "AUROC",
    greyed: Sequence[bool] | None = None,
) -> None:
    """Points (with CI bars where given) top to bottom; an undefined value is written as such;
    ``greyed`` rows (too small, unknown) are drawn grey."""
    values = np.asarray(values, dtype=np.float64)
    y = np.arange(len(labels))[::-1]
    defined = ~np.isnan(values)
    grey = np.zeros(len(values), bool) if greyed is None else np.asarray(greyed, bool)
    for rows, colour in ((defined & ~grey, COMPARED), (defined & grey, LEFT_OUT)):
        if lows is not None and highs is not None:
            low, high = np.asarray(lows, np.float64), np.asarray(highs, np.float64)
            has_ci = rows & ~np.isnan(low)
            ax.errorbar(
                values[has_ci], y[has_ci],
                xerr=[values[has_ci] - low[has_ci], high[has_ci] - values[has_ci]],
                fmt="none", ecolor=colour, elinewidth=1.2, capsize=2,
            )  # fmt: skip
        ax.plot(values[rows], y[rows], "o", color=colour, markersize=4)
    if reference is not None and not np.isnan(reference):
        ax.axvline(reference, color="grey", linestyle=":", linewidth=0.9)
    for row in y[~defined]:
        ax.text(0.02, row, "undefined", transform=ax.get_yaxis_transform(), va="center",
                fontsize=7, color="tab:red")  # fmt: skip
    ax.set_yticks(y, labels, fontsize=7)
    for tick, is_grey in zip(ax.get_yticklabels(), grey, strict=False):
        tick.set_color(LEFT_OUT if is_grey else "black")
    ax.set_ylim(-0.7, len(labels) - 0.3)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)


def shared_limits(frame: pd.DataFrame, margin: float = 0.02) -> tuple[float, float]:
    """One x-range for every panel: all points and intervals, within [0, 1]."""
    columns = [c for c in ("auroc", "ci_low", "ci_high") if c in frame]
    values = frame[columns].to_numpy(np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return 0.0, 1.0
    return max(0.0, float(values.min()) - margin), min(1.0 + margin, float(values.max()) + margin)


def _row_label(row) -> str:
    size = f"n={int(row['images'])}"
    if pd.notna(row.get("positives")):
        size += f", {int(row['positives'])} pos"
    note = row.get("note") or ""
    note = f" [{note}]" if note and note != "undefined" else ""
    return f"{row['attribute']}: {row['subgroup']} ({size}){note}"


def plot_subgroup_forest(
    table: pd.DataFrame, path: Path, overall: Mapping[str, float] | None = None, title: str = ""
) -> Path:
    """``subgroups_forest.png``: a panel per finding (the attribute means first), one row per
    subgroup with its AUROC and CI, a dotted line at the AUROC of all images, one x-axis."""
    rows = table[table["subgroup"] != "gap (max - min)"]
    findings = list(dict.fromkeys(rows["finding"]))
    means = [f for f in findings if f.startswith("Mean")]
    findings = means + [f for f in findings if f not in means]
    columns = 4
    grid_rows = math.ceil(len(findings) / columns)
    per_panel = rows["finding"].value_counts().max() if len(rows) else 1
    figure, axes = plt.subplots(
        grid_rows, columns, figsize=(4.6 * columns, (0.24 * per_panel + 1.3) * grid_rows),
        squeeze=False, sharex=True,
    )  # fmt: skip
    for ax in axes.ravel()[len(findings) :]:
        ax.axis("off")
    left, right = shared_limits(rows)
    for ax, finding in zip(axes.ravel(), findings, strict=False):
        block = rows[rows["finding"] == finding]
        lows = block["ci_low"] if "ci_low" in block else None
        highs = block["ci_high"] if "ci_high" in block else None
        notes = block["note"].fillna("") if "note" in block else pd.Series([""] * len(block))
        greyed = notes.isin(["too small", "unknown"]).to_list()
        reference = (overall or {}).get(finding)
        forest_panel(ax, [_row_label(r) for _, r in block.iterrows()], block["auroc"], lows,
                     highs, reference, greyed=greyed)  # fmt: skip
        ax.set_xlim(left, right)
        ax.tick_params(axis="x", labelbottom=True)
        heading = finding.replace("_", " ")
        if finding in means and "findings_in_mean" in block:
            counts = block.groupby("attribute", sort=False)["findings_in_mean"].first()
            heading = (
                "Mean over the findings usable in every subgroup\n("
                + ", ".join(f"{attribute}: {int(count)}" for attribute, count in counts.items())
                + " findings)"
            )
        ax.set_title(heading, fontsize=9, fontweight="bold" if finding in means else "normal")
    return save_figure(figure, path, title)
