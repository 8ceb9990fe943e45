"""The figures a reviewer reads, checked on the matplotlib objects: axes, limits, legend entries,
panels and colour bars — reliability diagrams, ROC/PR curves, the subgroup forest plot and the
heat-map overlay with its prediction table."""

from __future__ import annotations

import re
from importlib.resources import files

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.text import Text
from PIL import Image
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

from chexnet_pl.evaluation.calibration import fit_calibration
from chexnet_pl.evaluation.calibration.reliability import (
    MIN_BIN_IMAGES,
    reliability_figure,
    wilson_interval,
)
from chexnet_pl.evaluation.calibration.report import calibration_table
from chexnet_pl.evaluation.forest import FONT, WIDTH, plot_subgroup_forest
from chexnet_pl.evaluation.plots import curve_figures, pr_steps, write_curves
from chexnet_pl.evaluation.resampling import (
    PatientResamples,
    _interpolate_columns,
    pr_band,
    roc_band,
)
from chexnet_pl.evaluation.runner import model_name
from chexnet_pl.evaluation.subgroups import GAP
from chexnet_pl.files import FIGURE_DPI, save_figure
from chexnet_pl.visualization.figures import (
    ABOVE_COLOUR,
    COLORMAP,
    DISAGREE_COLOUR,
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
        assert [c.get_label() for c in curves.containers] == ["raw", "calibrated (platt)"]
        assert curves.get_lines()[-1].get_label() == "perfectly calibrated"
    matplotlib.pyplot.close(figure)
    alone = reliability_figure(scores, labels, NAMES, 15, before)  # no calibration fitted
    assert legend_texts(alone.legends[0]) == ["raw", "perfectly calibrated"]
    matplotlib.pyplot.close(alone)


def figure_texts(figure) -> list[Text]:
    """Every piece of text drawn on a figure (titles, labels, tick labels, legends, notes)."""
    figure.canvas.draw()  # tick labels exist once drawn
    return [t for t in figure.findobj(Text) if t.get_visible() and t.get_text().strip()]


def test_pr_curves_give_average_precision_and_the_no_skill_line_in_one_legend():
    scores, labels, patients = small_probabilities()
    figures = curve_figures(scores, labels, NAMES, patients=patients, bootstrap_samples=200,
                            scope="test split", model="densenet121")  # fmt: skip
    figure = figures["pr"]
    assert [ax.get_legend() for ax in figure.axes] == [None] * len(figure.axes)
    (legend,) = figure.legends  # one legend for the figure, not one per panel
    assert legend_texts(legend) == [
        "precision-recall curve", "95% CI (patient bootstrap)", "no skill (precision = prevalence)",
    ]  # fmt: skip
    pr = figure.axes
    for j, name in enumerate(NAMES):
        prevalence = labels[:, j].mean()
        ap = average_precision_score(labels[:, j], scores[:, j])
        assert pr[j].get_title() == (
            f"{name.replace('_', ' ')}\nAP {ap:.3f} (prevalence {prevalence:.3f})"
        )
        no_skill = pr[j].get_lines()[-1]
        assert np.allclose(no_skill.get_ydata(), prevalence)
        assert pr[j].get_xlabel().startswith("recall") and pr[j].get_ylabel().startswith(
            "precision"
        )
        assert len([c for c in pr[j].collections if isinstance(c, PolyCollection)]) == 1  # band
    assert figure.get_suptitle() == (
        "Precision-recall curves · test split · n = 3,000 images · model: densenet121"
    )
    for figure in figures.values():
        matplotlib.pyplot.close(figure)


def test_pr_curve_is_the_step_function_average_precision_sums_without_spikes():
    """Two positives of 20 images, one scored highest, one lowest: scikit-learn's points at
    recall 0.5 run from precision 1 down to 1/19; drawn as they come (the old ``ax.step``),
    the curve fell to ~0.05 at recall 0.5 and rose again. The precision at recall 0.5 is 1."""
    positive = np.zeros(20, bool)
    positive[[0, 19]] = True
    scores = np.linspace(1, 0, 20)
    raw_precision, raw_recall, _ = precision_recall_curve(positive, scores)
    assert raw_precision[raw_recall == 0.5].min() < 0.1  # the corner the spike was drawn at
    figures = curve_figures(scores[:, None], positive[:, None].astype(float), ["Atelectasis"])
    (line,) = [ln for ln in figures["pr"].axes[0].get_lines() if ln.get_label().startswith("prec")]
    assert line.get_drawstyle() == "steps-pre"  # precision of recall r[k] on (r[k-1], r[k]]
    recall, precision = line.get_xdata(), line.get_ydata()
    assert list(recall) == [0.0, 0.5, 1.0] and list(precision) == [1.0, 1.0, 0.1]
    assert np.all(np.diff(recall) > 0)  # one value per recall: no vertical spike at a corner
    for figure in figures.values():
        matplotlib.pyplot.close(figure)
    # On a realistic curve too: the steps sum to scikit-learn's average precision.
    many_scores, many_labels, _ = small_probabilities()
    for j in range(len(NAMES)):
        recall, precision = pr_steps(many_labels[:, j] > 0.5, many_scores[:, j])
        assert np.all(np.diff(recall) > 0)
        assert np.sum(np.diff(recall) * precision[1:]) == pytest.approx(
            average_precision_score(many_labels[:, j], many_scores[:, j])
        )


def test_pr_band_holds_the_curve_and_narrows_with_more_patients():
    widths = []
    for n in (600, 6000):
        scores, labels, patients = small_probabilities(1, n)
        grid, low, high = pr_band(scores[:, 0], labels[:, 0], PatientResamples.of(patients, 300))
        recall, precision = pr_steps(labels[:, 0] > 0.5, scores[:, 0])
        curve = precision[np.searchsorted(recall, grid)]  # the step function at each grid recall
        inside = (low - 0.02 <= curve) & (curve <= high + 0.02)
        assert inside[grid > 0.05].mean() > 0.9 and (low <= high).all()
        widths.append(float(np.mean(high - low)))
    assert widths[1] < widths[0] / 2


def test_roc_curves_get_their_bootstrap_band_when_intervals_are_computed():
    scores, labels, patients = small_probabilities()
    intervals = {name: (0.7, 0.8) for name in NAMES}
    with_band = curve_figures(scores, labels, NAMES, patients=patients, bootstrap_samples=200,
                              intervals=intervals, scope="val split")["roc"]  # fmt: skip
    without = curve_figures(scores, labels, NAMES)["roc"]
    (legend,) = with_band.legends
    assert legend_texts(legend) == ["ROC curve", "95% CI (patient bootstrap)", "chance"]
    assert legend_texts(without.legends[0]) == ["ROC curve", "chance"]
    aurocs = [roc_auc(labels[:, j], scores[:, j]) for j in range(len(NAMES))]
    for j in range(len(NAMES)):
        ax = with_band.axes[j]
        assert ax.get_legend() is None  # nothing covers the curves below the diagonal
        assert ax.get_title().endswith(f"AUROC {aurocs[j]:.3f} (0.700–0.800)")
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == 1
        assert not [c for c in without.axes[j].collections if isinstance(c, PolyCollection)]
    assert with_band.get_suptitle() == "ROC curves · val split · n = 3,000 images"  # no model
    matplotlib.pyplot.close(with_band)
    matplotlib.pyplot.close(without)


def roc_auc(labels, scores) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


@pytest.mark.parametrize("figure_format", ["png", "pdf", "svg"])
def test_figures_are_written_at_200_dpi_or_as_vectors(tmp_path, figure_format):
    scores, labels, _ = small_probabilities(n=300)
    written = write_curves(curve_figures(scores, labels, NAMES), tmp_path, figure_format)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"pr_curves.{figure_format}", f"roc_curves.{figure_format}",
    ]  # fmt: skip
    head = written["roc"].read_bytes()[:400]
    magic = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF-", "svg": b"<?xml"}[figure_format]
    assert head.startswith(magic)
    if figure_format == "svg":
        assert b"<svg" in head
    if figure_format == "png":
        with Image.open(written["roc"]) as image:
            assert image.info["dpi"] == pytest.approx((FIGURE_DPI, FIGURE_DPI), abs=0.01)
            assert FIGURE_DPI >= 200 and image.size[0] == round(16 * FIGURE_DPI)  # 16 in wide


def test_save_figure_reads_the_dpi_back(tmp_path):
    figure = matplotlib.pyplot.figure(figsize=(2, 1))
    path = save_figure(figure, tmp_path / "f.png")
    with Image.open(path) as image:
        assert image.size == (2 * FIGURE_DPI, FIGURE_DPI)
        assert round(image.info["dpi"][0]) == FIGURE_DPI >= 200


def test_a_figure_title_names_the_model_of_a_checkpoint():
    from conftest import make_model

    assert model_name(make_model(backbone="resnet18")) == "resnet18"
    assert model_name(object()) == ""  # not known: the titles leave it out


def test_reliability_bins_hold_ten_images_with_wilson_intervals_and_whole_image_counts():
    """17 images and 15 bins asked: one bin (no more zig-zag of one-image bins), its 95% Wilson
    interval, and image ticks that are whole numbers; 3,000 images keep the 15 bins."""
    rng = np.random.default_rng(3)
    for n, expected in ((17, 1), (55, 5), (3000, 15)):
        scores = rng.random((n, 1))
        labels = (rng.random((n, 1)) < scores).astype(float)
        labels[:2, 0] = [0, 1]
        figure = reliability_figure(scores, labels, ["Effusion"], 15)
        curves, histogram = figure.axes
        (container,) = curves.containers
        data_line = container.lines[0]
        predicted, observed = data_line.get_xdata(), data_line.get_ydata()
        assert len(predicted) == expected
        counts = np.array_split(np.arange(n), expected)
        assert min(len(c) for c in counts) >= MIN_BIN_IMAGES or expected == 1
        order = np.argsort(scores[:, 0], kind="stable")
        positives = np.array([labels[order[c], 0].sum() for c in counts])
        trials = np.array([len(c) for c in counts])
        assert observed == pytest.approx(positives / trials)
        low, high = independent_wilson(positives, trials, 1.959963984540054)
        (bars,) = container.lines[2]
        segments = np.array(bars.get_segments())  # per bin: (x, low), (x, high)
        assert segments[:, 0, 1] == pytest.approx(low) and segments[:, 1, 1] == pytest.approx(high)
        sizes = (
            f"{trials.min()}" if trials.min() == trials.max() else f"{trials.min()}–{trials.max()}"
        )
        assert any(f"of {sizes} images" in t.get_text() for t in curves.texts)
        figure.canvas.draw()
        ticks = histogram.get_yticks()
        assert np.allclose(ticks, np.round(ticks))  # no "2.5 images"
        matplotlib.pyplot.close(figure)
    assert wilson_interval(np.array([0]), np.array([10]))[0] == pytest.approx([0.0])
    assert wilson_interval(np.array([0]), np.array([10]))[1] == pytest.approx([0.2775], abs=1e-4)


def independent_wilson(k: np.ndarray, n: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson interval as the roots of (k/n - p)^2 = z^2 p (1 - p) / n, a quadratic in p."""
    a = n + z**2
    b = -(2 * k + z**2)
    c = k**2 / n
    root = np.sqrt(b**2 - 4 * a * c)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


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


def forest_table(mean_defined: bool = True) -> pd.DataFrame:
    rows = []
    for finding, base in (("Mean (findings usable in every subgroup)", 0.8), ("Effusion", 0.7),
                          ("Hernia", 0.9)):  # fmt: skip
        for subgroup, images, note, shift in (("F", 900, "", 0.0), ("M", 1100, "", 0.05),
                                              ("80+", 2, "too small", -0.3),
                                              ("unknown", 0, "too small", np.nan)):  # fmt: skip
            auroc = base + shift
            if finding == "Hernia" and subgroup in "FM":  # points at the ends of the scale
                auroc = 1.0 if subgroup == "F" else 0.0
            if finding.startswith("Mean") and not mean_defined:
                auroc = np.nan
            row = {"attribute": "sex" if subgroup in "FM" else "age", "subgroup": subgroup,
                   "finding": finding, "images": images, "auroc": auroc,
                   "ci_low": max(0.0, auroc - 0.03), "ci_high": min(1.0, auroc + 0.03),
                   "note": note}  # fmt: skip
            if finding.startswith("Mean"):
                row["findings_in_mean"] = 14
            else:
                row["positives"] = images // 10
            rows.append(row)
        rows.append({"attribute": "sex", "subgroup": GAP, "finding": finding, "auroc": 0.05})
    return pd.DataFrame(rows)


def saved_forest(tmp_path, table, title: str = "") -> matplotlib.figure.Figure:
    """``plot_subgroup_forest``'s figure as it is written (drawn, not closed)."""
    import matplotlib.pyplot as plt

    saved = []
    original = plt.Figure.savefig
    plt.Figure.savefig = lambda self, *a, **k: saved.append(self) or original(self, *a, **k)
    try:
        plot_subgroup_forest(table, tmp_path / "forest.png", {"Effusion": 0.72}, title)
    finally:
        plt.Figure.savefig = original
    (figure,) = saved
    return figure


def test_forest_plot_fits_a_page_names_rows_once_and_shows_every_point(tmp_path):
    title = "AUROC by subgroup · test split · n = 2,002 images · model: densenet121\n" + "x " * 80
    figure = saved_forest(tmp_path, forest_table(), title)
    panels = [ax for ax in figure.axes if ax.get_visible() and ax.axison]
    assert [ax.get_title() for ax in panels] == ["Mean*", "Effusion", "Hernia"]
    assert figure.get_size_inches()[0] == WIDTH <= 7.5  # a journal's full page width
    assert min(t.get_fontsize() for t in figure_texts(figure)) >= FONT >= 8  # readable at it
    limits = {ax.get_xlim() for ax in panels}
    assert len(limits) == 1  # one x-axis for every panel
    ((low, high),) = limits
    assert low < 0.0 - 0.05 and high > 1.0 + 0.05  # points at 0 and 1 inside the frame
    hernia = panels[2]
    points = np.concatenate([line.get_xdata() for line in hernia.get_lines()
                             if line.get_marker() == "o"])  # fmt: skip
    assert 0.0 in points and 1.0 in points
    # Subgroup names and sizes once per row of panels: at the left of its first panel only.
    names = [[t.get_text() for t in ax.texts] for ax in panels]
    row_names = ["sex: F", "sex: M", "age: 80+", "age: unknown"]
    assert all(n in names[0] for n in row_names) and "n" in names[0]
    assert not any(n in texts for n in row_names for texts in names[1:])
    assert [t for t in names[0] if t in ("900", "1,100", "2", "0")] == ["900", "1,100", "2", "0"]
    # Positives in a column beside each finding's panel; "no images" where a subgroup has none.
    assert [t for t in names[1] if t in ("pos.", "90", "110", "0")] == [
        "90",
        "110",
        "0",
        "0",
        "pos.",
    ]
    for texts in names:
        assert "no images" in texts and "too small" not in " ".join(texts)
    assert any("Mean: over the findings usable in every subgroup" in t.get_text()
               for t in figure.texts)  # fmt: skip
    matplotlib.pyplot.close(figure)
    assert (tmp_path / "forest.png").is_file()


def test_forest_plot_has_no_mean_panel_when_no_mean_is_defined(tmp_path):
    figure = saved_forest(tmp_path, forest_table(mean_defined=False))
    panels = [ax for ax in figure.axes if ax.axison]
    assert [ax.get_title() for ax in panels] == ["Effusion", "Hernia"]
    assert not any("Mean" in t.get_text() for t in figure_texts(figure))
    matplotlib.pyplot.close(figure)


def test_page_and_overlays_give_one_meaning_to_each_colour_and_a_heat_map_scale():
    """The serve page: its heat map's colour scale is the overlays' colour map; blue rows are
    above their threshold (as in the overlay PNGs, where pink is a disagreement with the truth);
    the drop zone names DICOM and the file picker takes it."""
    page = files("chexnet_pl.serving").joinpath("page.html").read_text()
    gradient = re.search(r"#scale-bar \{[^}]*linear-gradient\(to right, ([^)]*)\)", page)
    stops = [stop.strip() for stop in gradient.group(1).split(",")]
    colormap = matplotlib.colormaps[COLORMAP]
    assert stops == [matplotlib.colors.to_hex(colormap(x)) for x in np.linspace(0, 1, len(stops))]
    assert 'id="scale-bar"' in page and "0–1" in page
    above = re.search(r"tr\.above td \{ background: (#[0-9a-f]{6})", page).group(1)
    assert above == ABOVE_COLOUR != DISAGREE_COLOUR and DISAGREE_COLOUR not in page
    drop = re.search(r'<div id="drop">(.*?)</div>', page, re.S).group(1)
    assert "DICOM" in drop and "application/dicom" in drop and ".dcm" in drop


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
    # One meaning per colour (as on the serve page): blue above threshold, pink disagreement.
    colours = [matplotlib.colors.to_hex(cells[r, 0].get_facecolor()) for r in range(1, 4)]
    assert colours == [ABOVE_COLOUR, DISAGREE_COLOUR, DISAGREE_COLOUR]
    matplotlib.pyplot.close(figure)


@pytest.mark.slow  # over ~5 s: the slow tier keeps make test-fast under 3 min
def test_evaluate_writes_every_figure_in_the_format_asked(nih_sample, tmp_path):
    """``evaluation.figure_format=pdf`` through the shipped config: the five figures of the
    17-image sample as PDF (none as PNG); a wrong format is a settings error naming the choices."""
    from conftest import compose_config

    from chexnet_pl.data.nih import label_index
    from chexnet_pl.data.nih_table import class_names, read_data_entry
    from chexnet_pl.data.splits import read_name_list
    from chexnet_pl.errors import ConfigError
    from chexnet_pl.evaluate import evaluate

    truth = label_index(read_data_entry(nih_sample / "Data_Entry_2017.csv"))
    names = read_name_list(nih_sample / "test_list.txt")
    labels = truth.loc[names, class_names()].to_numpy()
    scores = np.clip(0.25 * labels + np.random.default_rng(0).random(labels.shape) * 0.75, 0, 1)
    preds = pd.DataFrame(scores, columns=[f"prob_{c}" for c in class_names()])
    preds.insert(0, "Image Index", names)
    preds.to_csv(tmp_path / "preds.csv", index=False)
    common = (f"preds={tmp_path / 'preds.csv'}", f"data.root={nih_sample}",
              "evaluation.bootstrap_samples=20")  # fmt: skip
    evaluate(compose_config("evaluate", tmp_path / "out", *common, "evaluation.figure_format=pdf"))
    figures = sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix in (".png", ".pdf"))
    assert figures == ["pr_curves.pdf", "reliability.pdf", "roc_curves.pdf", "stratified.pdf",
                       "subgroups_forest.pdf"]  # fmt: skip
    for name in figures:
        assert (tmp_path / "out" / name).read_bytes().startswith(b"%PDF-")
    with pytest.raises(ConfigError, match=r"figure_format='?tiff'? .*use one of: png, pdf, svg"):
        evaluate(compose_config("evaluate", tmp_path / "bad", *common,
                                "evaluation.figure_format=tiff"))  # fmt: skip
