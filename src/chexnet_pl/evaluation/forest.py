"""Forest plots: one row per subgroup (or finding), a point with its confidence interval.

The subgroup forest plot is sized for a journal's full page width (``WIDTH`` inches, no text
under ``FONT`` points at that size): one panel per finding (the attribute means first, when they
are defined), every panel with the same rows in the same order and one shared x-axis, so
findings compare by eye. Each row of panels names its subgroups once, at its left, with their
size (images) in a column beside; each panel gives its positives per subgroup in a column at its
right. Points at 0 or 1 stay inside the frame. Cells too small to compare, or of an unknown
subgroup, are grey; an undefined AUROC is written in red, a subgroup without images as such.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from matplotlib.transforms import ScaledTranslation  # noqa: E402

from chexnet_pl.files import save_figure  # noqa: E402

COMPARED, LEFT_OUT = "tab:blue", "darkgrey"
FONT = 8  # pt: the smallest text, at the printed size
WIDTH = 7.2  # inches: a journal's full page width (183 mm)
NO_IMAGES = "no images"


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
                fmt="none", ecolor=colour, elinewidth=1.2, capsize=2, clip_on=False,
            )  # fmt: skip
        ax.plot(values[rows], y[rows], "o", color=colour, markersize=4, clip_on=False)
    if reference is not None and not np.isnan(reference):
        ax.axvline(reference, color="grey", linestyle=":", linewidth=0.9)
    for row in y[~defined]:
        ax.text(0.02, row, "undefined", transform=ax.get_yaxis_transform(), va="center",
                fontsize=FONT, color="tab:red")  # fmt: skip
    ax.set_yticks(y, labels, fontsize=FONT)
    for tick, is_grey in zip(ax.get_yticklabels(), grey, strict=False):
        tick.set_color(LEFT_OUT if is_grey else "black")
    ax.set_ylim(-0.7, len(labels) - 0.3)
    ax.set_xlabel(xlabel, fontsize=FONT)
    ax.tick_params(axis="x", labelsize=FONT)


def shared_limits(frame: pd.DataFrame, margin: float = 0.02) -> tuple[float, float]:
    """One x-range for every panel: all points and intervals, with a margin either side (a point
    at 0 or 1 is drawn inside the frame, not on it)."""
    columns = [c for c in ("auroc", "ci_low", "ci_high") if c in frame]
    values = frame[columns].to_numpy(np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return -margin, 1.0 + margin
    low, high = max(0.0, float(values.min())), min(1.0, float(values.max()))
    margin = max(margin, 0.1 * (high - low))  # a marker's width and more, at print size
    return low - margin, high + margin


def _defined(block: pd.DataFrame) -> bool:
    return bool(np.isfinite(block["auroc"].to_numpy(np.float64)).any())


def plot_subgroup_forest(
    table: pd.DataFrame, path: Path, overall: Mapping[str, float] | None = None, title: str = ""
) -> Path:
    """``subgroups_forest.<format>``: a panel per finding (the attribute means first, when
    defined), one row per subgroup with its AUROC and CI, a dotted line at the AUROC of all
    images, one x-axis; subgroup names and sizes once per row of panels, positives beside each
    panel."""
    rows = table[table["subgroup"] != "gap (max - min)"]
    findings = list(dict.fromkeys(rows["finding"]))
    means = [f for f in findings if f.startswith("Mean") and _defined(rows[rows["finding"] == f])]
    findings = means + [f for f in findings if not f.startswith("Mean")]
    groups = list(dict.fromkeys(zip(rows["attribute"], rows["subgroup"], strict=True)))
    count = len(groups)
    columns = min(4, max(1, len(findings)))
    grid_rows = math.ceil(len(findings) / columns)
    left, right_column, gap = 1.3, 0.4, 0.12  # inches: labels and n; positives; between panels
    panel_width = (WIDTH - left - 0.1) / columns - right_column - gap
    panel_height = 0.16 * count + 0.1
    row_height = panel_height + 0.75  # the panel's title above, its x tick labels below
    title = "\n".join(textwrap.fill(line, 105) for line in title.splitlines())
    top = 0.45 + 0.17 * (title.count("\n") + 1) if title else 0.2
    height = top + grid_rows * row_height + (0.3 if means else 0.1)
    figure = plt.figure(figsize=(WIDTH, height))
    left_out = rows["note"].fillna("").isin(["too small", "unknown"]) if "note" in rows else None
    x_low, x_high = shared_limits(rows)
    by_group = rows.groupby(["attribute", "subgroup"], sort=False)
    sizes = by_group["images"].first()
    notes = rows["note"].fillna("") if "note" in rows else pd.Series("", index=rows.index)
    # A subgroup left out of every comparison (unknown, or under the minimum size): grey name.
    greyed = notes.isin(["too small", "unknown"]).groupby([rows["attribute"], rows["subgroup"]],
                                                          sort=False).all()  # fmt: skip
    for k, finding in enumerate(findings):
        r, c = divmod(k, columns)
        x0 = left + c * (panel_width + right_column + gap)
        y0 = height - top - r * row_height - 0.3 - panel_height
        ax = figure.add_axes([x0 / WIDTH, y0 / height, panel_width / WIDTH, panel_height / height])
        block = (
            rows[rows["finding"] == finding].set_index(["attribute", "subgroup"]).reindex(groups)
        )
        _subgroup_panel(ax, block, groups, (overall or {}).get(finding),
                        None if left_out is None else left_out[rows["finding"] == finding])  # fmt: skip
        ax.set_xlim(x_low, x_high)
        heading = "Mean*" if finding in means else finding.replace("_", " ")
        ax.set_title(heading, fontsize=FONT + 1, fontweight="bold" if finding in means else "normal",
                     pad=10)  # fmt: skip
        ax.text(1.0, 1.0, "pos.", transform=_shifted(ax, 0.06), fontsize=FONT, va="bottom",
                ha="left", color="dimgrey")  # fmt: skip
        if c == 0:
            _row_names(ax, groups, sizes, greyed)
    if means:
        counts = (
            rows[rows["finding"] == means[0]].groupby("attribute", sort=False)["findings_in_mean"]
            .first().dropna()
            if "findings_in_mean" in rows else pd.Series(dtype=float)
        )  # fmt: skip
        usable = ", ".join(f"{a}: {int(n)}" for a, n in counts.items())
        figure.text(0.5 / WIDTH, 0.08 / height,
                    f"* Mean: over the findings usable in every subgroup ({usable} findings)",
                    fontsize=FONT, ha="left", va="bottom")  # fmt: skip
    return save_figure(figure, path, title, title_size=FONT + 1, tight=False)


def _shifted(ax, inches: float):
    """Axes coordinates moved ``inches`` to the right (left when negative)."""
    return ax.transAxes + ScaledTranslation(inches, 0, ax.figure.dpi_scale_trans)


def _subgroup_panel(ax, block: pd.DataFrame, groups, reference, left_out) -> None:
    """One finding's rows: points and CIs (grey where left out), "undefined" in red, "no
    images" where a subgroup has none, the positives in a column at the right."""
    y = np.arange(len(groups))[::-1]
    images = block["images"].to_numpy(np.float64)
    empty = ~(images > 0)
    greyed = np.zeros(len(groups), bool)
    if left_out is not None:
        notes = block["note"].fillna("").to_numpy() if "note" in block else np.full(len(groups), "")
        greyed = np.isin(notes, ["too small", "unknown"])
    values = block["auroc"].to_numpy(np.float64)
    lows = block["ci_low"].to_numpy(np.float64) if "ci_low" in block else None
    highs = block["ci_high"].to_numpy(np.float64) if "ci_high" in block else None
    for rows_drawn, colour in ((~greyed, COMPARED), (greyed, LEFT_OUT)):
        shown = rows_drawn & np.isfinite(values)
        if lows is not None and highs is not None:
            has_ci = shown & np.isfinite(lows) & np.isfinite(highs)
            ax.errorbar(values[has_ci], y[has_ci],
                        xerr=[values[has_ci] - lows[has_ci], highs[has_ci] - values[has_ci]],
                        fmt="none", ecolor=colour, elinewidth=1.0, capsize=1.5, clip_on=False)  # fmt: skip
        ax.plot(values[shown], y[shown], "o", color=colour, markersize=3.5, clip_on=False)
    for row, is_empty, value in zip(y, empty, values, strict=True):
        if is_empty:
            ax.text(0.03, row, NO_IMAGES, transform=ax.get_yaxis_transform(), va="center",
                    fontsize=FONT, color=LEFT_OUT)  # fmt: skip
        elif not np.isfinite(value):
            ax.text(0.03, row, "undefined", transform=ax.get_yaxis_transform(), va="center",
                    fontsize=FONT, color="tab:red")  # fmt: skip
    if reference is not None and np.isfinite(reference):
        ax.axvline(reference, color="grey", linestyle=":", linewidth=0.9)
    attributes = [a for a, _ in groups]
    for row in range(1, len(groups)):  # a thin line between attributes
        if attributes[row] != attributes[row - 1]:
            ax.axhline(y[row] + 0.5, color="lightgrey", linewidth=0.6)
    positives = block["positives"].to_numpy(np.float64) if "positives" in block else None
    if positives is not None:
        for row, value, is_grey in zip(y, positives, greyed, strict=True):
            if np.isfinite(value):
                ax.text(1.0, row, f"{int(value):,}", transform=_blend(ax, 0.06), va="center",
                        ha="left", fontsize=FONT, color=LEFT_OUT if is_grey else "black")  # fmt: skip
    ax.set_yticks(y, [""] * len(y))
    ax.tick_params(axis="y", length=0)
    ax.set_ylim(-0.6, len(groups) - 0.4)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=3, steps=[1, 2.5, 5, 10]))
    ax.tick_params(axis="x", labelsize=FONT)
    ax.set_xlabel("AUROC", fontsize=FONT, labelpad=1)


def _blend(ax, inches: float):
    """x in axes coordinates moved ``inches`` to the right, y in data coordinates."""
    return ax.get_yaxis_transform() + ScaledTranslation(inches, 0, ax.figure.dpi_scale_trans)


def _row_names(ax, groups, sizes: pd.Series, greyed: pd.Series) -> None:
    """Left of the first panel of a row of panels: each subgroup ("sex: F") and its images
    (grey: a subgroup left out of every comparison)."""
    y = np.arange(len(groups))[::-1]
    for row, group in zip(y, groups, strict=True):
        n = sizes.get(group, np.nan)
        colour = LEFT_OUT if bool(greyed.get(group, False)) else "black"
        ax.text(0.0, row, f"{group[0]}: {group[1]}", transform=_blend(ax, -1.25), va="center",
                ha="left", fontsize=FONT, color=colour)  # fmt: skip
        ax.text(0.0, row, "" if pd.isna(n) else f"{int(n):,}", transform=_blend(ax, -0.06),
                va="center", ha="right", fontsize=FONT, color=colour)  # fmt: skip
    ax.text(0.0, 1.0, "n", transform=_shifted(ax, -0.06), fontsize=FONT, va="bottom",
            ha="right", color="dimgrey")  # fmt: skip
