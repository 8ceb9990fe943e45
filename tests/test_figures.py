"""The figures a reviewer reads, checked on the matplotlib objects: axes, limits, legend entries,
panels and colour bars — reliability diagrams, ROC/PR curves, the subgroup forest plot and the
heat-map overlay with its prediction table."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from sklearn.metrics import average_precision_score, roc_curve

from chexnet_pl.evaluation.calibration import fit_calibration
from chexnet_pl.evaluation.calibration_report import calibration_table
from chexnet_pl.evaluation.forest import plot_subgroup_forest
from chexnet_pl.evaluation.plots import curve_figures
from chexnet_pl.evaluation.reliability import reliability_figure
from chexnet_pl.evaluation.resampling import PatientResamples, _interpolate_columns, roc_band
from chexnet_pl.evaluation.subgroups import GAP
from chexnet_pl.visualization.figures import (
    COLORMAP,
    SHOWN_TOP_PERCENT,
    drawn,
    overlay,
    overlay_figure,
    prediction_table,
    upsample,
)

NAMES = ["Atelectasis", "Pleural_Thickening", "Hernia"]


def small_probabilities(seed: int = 0, n: int = 3000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores like a real model's: prevalences 2-10%, probabilities mostly under 0.2, over-
    confident; 3 images per patient."""
    rng = np.random.default_rng(seed)
    prevalence = np.array([0.1, 0.04, 0.02])
    labels = (rng.random((n, 3)) < prevalence).astype(float)
    logits = -2.8 + 1.2 * labels + rng.normal(0, 0.8, labels.shape)
    return 1 / (1 + np.exp(-logits)), labels, np.repeat(np.arange(n // 3), 3)


def legend_texts(legend) -> list[str]:
    return [t.get_text() for t in legend.get_texts()]


def test_reliability_zoomed_with_raw_and_calibrated_curves_a_histogram_axis_and_ece():
    scores, labels, _ = small_probabilities()
    calibration = fit_calibration(scores, labels, NAMES, "platt")
    calibrated = calibration.apply(scores, NAMES)
    before = calibration_table(scores, labels, NAMES)
    after = calibration_table(calibrated, labels, NAMES)
    figure = reliability_figure(scores, labels, NAMES, 15, before, calibrated, after, "platt", "t")
    assert len(figure.axes) == 2 * len(NAMES)  # per class: curves, and the histogram under them
    assert legend_texts(figure.legends[0]) == ["raw", "calibrated (platt)", "perfectly calibrated"]
    for j, name in enumerate(NAMES):
        curves, histogram = figure.axes[2 * j], figure.axes[2 * j + 1]
        high = curves.get_xlim()[1]
        assert high < 0.9 and curves.get_ylim() == (0, high)  # zoomed to the data, square
        assert high >= np.percentile(scores[:, j], 99)  # ...but holding nearly every prediction
        assert histogram.get_ylabel() == "images" and histogram.get_xlim() == curves.get_xlim()
        assert sum(p.get_height() for p in histogram.patches) == (scores[:, j] <= high).sum()
        ece = (
            f"ECE {before.at[name, 'ece_equal_mass']:.3f} → {after.at[name, 'ece_equal_mass']:.3f}"
        )
        assert curves.get_title() == f"{name.replace('_', ' ')}\n{ece}"
        assert [line.get_label() for line in curves.get_lines()] == [
            "raw", "calibrated (platt)", "perfectly calibrated",
        ]  # fmt: skip
    matplotlib.pyplot.close(figure)
    alone = reliability_figure(scores, labels, NAMES, 15, before)  # no calibration fitted
    assert legend_texts(alone.legends[0]) == ["raw", "perfectly calibrated"]
    matplotlib.pyplot.close(alone)


def test_pr_curves_give_average_precision_and_the_no_skill_line():
    scores, labels, _ = small_probabilities()
    figures = curve_figures(scores, labels, NAMES)
    pr = figures["pr"].axes
    for j in range(len(NAMES)):
        prevalence = labels[:, j].mean()
        ap = average_precision_score(labels[:, j], scores[:, j])
        assert legend_texts(pr[j].get_legend()) == [
            f"AP {ap:.3f}", f"no skill (prevalence {prevalence:.3f})",
        ]  # fmt: skip
        no_skill = pr[j].get_lines()[-1]
        assert np.allclose(no_skill.get_ydata(), prevalence)
        assert pr[j].get_xlabel().startswith("recall") and pr[j].get_ylabel().startswith(
            "precision"
        )
    for figure in figures.values():
        matplotlib.pyplot.close(figure)


def test_roc_curves_get_their_bootstrap_band_when_intervals_are_computed():
    scores, labels, patients = small_probabilities()
    intervals = {name: (0.7, 0.8) for name in NAMES}
    with_band = curve_figures(scores, labels, NAMES, patients=patients, bootstrap_samples=200,
                              intervals=intervals)["roc"]  # fmt: skip
    without = curve_figures(scores, labels, NAMES)["roc"]
    for j in range(len(NAMES)):
        ax = with_band.axes[j]
        texts = legend_texts(ax.get_legend())
        assert texts[0].endswith("(0.700-0.800)") and texts[1] == "95% CI (patient bootstrap)"
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == 1
        assert not [c for c in without.axes[j].collections if isinstance(c, PolyCollection)]
        assert "CI" not in " ".join(legend_texts(without.axes[j].get_legend()))
    matplotlib.pyplot.close(with_band)
    matplotlib.pyplot.close(without)


def test_roc_band_holds_the_curve_and_narrows_with_more_patients():
    widths = []
    for n in (600, 6000):
        scores, labels, patients = small_probabilities(1, n)
        grid, low, high = roc_band(scores[:, 0], labels[:, 0], PatientResamples.of(patients, 300))
        fpr, tpr, _ = roc_curve(labels[:, 0], scores[:, 0])
        curve = np.interp(grid, fpr, tpr)
        inside = (low - 0.01 <= curve) & (curve <= high + 0.01)
        assert inside.mean() > 0.95 and (low <= high).all()
        widths.append(float(np.mean(high - low)))
    assert widths[1] < widths[0] / 2  # ten times the patients: about a third of the width
    x = np.array([[0.0, 0.0], [0.2, 0.5], [0.2, 0.5], [1.0, 1.0]])
    y = np.array([[0.0, 0.0], [0.4, 0.9], [0.6, 0.9], [1.0, 1.0]])
    grid = np.linspace(0, 1, 11)
    columns = _interpolate_columns(x, y, grid)
    assert columns[1] == pytest.approx(np.interp(grid, x[:, 1], y[:, 1]))
    assert columns[0][2] == pytest.approx(0.6)  # at a vertical step, the higher sensitivity


def forest_table() -> pd.DataFrame:
    rows = []
    for finding, base in (("Mean (findings usable in every subgroup)", 0.8), ("Effusion", 0.7),
                          ("Hernia", 0.9)):  # fmt: skip
        for subgroup, images, note, shift in (("F", 900, "", 0.0), ("M", 1100, "", 0.05),
                                              ("80+", 2, "too small", -0.3)):  # fmt: skip
            row = {"attribute": "sex" if subgroup in "FM" else "age", "subgroup": subgroup,
                   "finding": finding, "images": images, "auroc": base + shift,
                   "ci_low": base + shift - 0.03, "ci_high": base + shift + 0.03, "note": note}  # fmt: skip
            if finding.startswith("Mean"):
                row["findings_in_mean"] = 14
            else:
                row["positives"] = images // 10
            rows.append(row)
        rows.append({"attribute": "sex", "subgroup": GAP, "finding": finding, "auroc": 0.05})
    return pd.DataFrame(rows)


def test_forest_plot_shares_one_x_axis_and_gives_n_per_row(tmp_path):
    import matplotlib.pyplot as plt

    saved = []
    original = plt.Figure.savefig
    plt.Figure.savefig = lambda self, *a, **k: saved.append(self) or original(self, *a, **k)
    try:
        plot_subgroup_forest(forest_table(), tmp_path / "forest.png", {"Effusion": 0.72})
    finally:
        plt.Figure.savefig = original
    (figure,) = saved
    panels = [ax for ax in figure.axes if ax.get_visible() and ax.axison]
    assert len(panels) == 3
    limits = {ax.get_xlim() for ax in panels}
    assert len(limits) == 1  # one x-axis for every panel
    ((low, high),) = limits
    assert low <= 0.9 - 0.3 - 0.03 and high >= 0.9 + 0.05 + 0.03  # every point and interval
    labels = [t.get_text() for t in panels[1].get_yticklabels()]
    assert labels == ["sex: F (n=900, 90 pos)", "sex: M (n=1100, 110 pos)",
                      "age: 80+ (n=2, 0 pos) [too small]"]  # fmt: skip
    colours = [t.get_color() for t in panels[1].get_yticklabels()]
    assert colours[:2] == ["black", "black"] and colours[2] != "black"
    assert panels[0].get_title().startswith("Mean over the findings usable in every subgroup")
    assert (tmp_path / "forest.png").is_file()


def test_overlay_shows_the_map_only_where_it_matters_with_a_colour_bar():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (200, 160), dtype=np.uint8)
    heat = np.zeros((7, 7), np.float32)
    heat[5, 1] = 1.0  # one hot spot, lower left
    blended = overlay(gray, heat)
    shown = drawn(upsample(heat, gray.shape))
    assert 0 < shown.mean() <= SHOWN_TOP_PERCENT / 100
    untouched = np.repeat(gray[..., None], 3, axis=-1)
    assert (blended[~shown] == untouched[~shown]).all()  # the anatomy elsewhere is as it was
    assert (blended[shown] != untouched[shown]).any(axis=-1).mean() > 0.9
    assert shown[150:, :40].any() and not shown[:100].any()  # where the hot spot is
    assert COLORMAP in ("inferno", "magma", "viridis", "plasma", "cividis")  # perceptual
    names = ["Atelectasis", "Pleural_Thickening", "No Finding"]
    table = prediction_table([0.7, 0.2, 0.4], names, [1, 1, 0], [0.5, 0.3, 0.35])
    figure = overlay_figure(
        gray, heat, "Atelectasis", 0.7, table, "t", "aucs.csv (beside the checkpoint)"
    )
    colour_bars = [ax for ax in figure.axes if ax.get_label() == "<colorbar>"]
    assert len(colour_bars) == 1 and "top 20%" in colour_bars[0].get_xlabel()
    assert colour_bars[0].collections or colour_bars[0].images  # the scale is drawn
    image_ax = figure.axes[0]
    assert image_ax.get_title() == "Atelectasis: p = 0.700, threshold 0.500"
    rendered = next(ax for ax in figure.axes if ax.tables).tables[0]
    cells = rendered.get_celld()
    header = [cells[0, c].get_text().get_text() for c in range(6)]
    assert header == ["finding", "probability", "threshold", "above", "truth", "disagree"]
    rows = [[cells[r, c].get_text().get_text() for c in range(6)] for r in range(1, 4)]
    assert rows[0] == ["Atelectasis", "0.700", "0.500", "yes", "yes", ""]
    assert rows[1] == ["No Finding", "0.400", "0.350", "yes", "no", "✗"]
    assert rows[2] == ["Pleural Thickening", "0.200", "0.300", "no", "yes", "✗"]
    matplotlib.pyplot.close(figure)
