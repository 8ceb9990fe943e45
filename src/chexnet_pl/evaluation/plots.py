"""ROC and precision-recall curves, one panel per class, as figure files (PNG at 200 dpi, or PDF/SVG).

Each figure's title names it, the images (split or scope and n) and the model; one legend for the
figure (every panel draws the same kinds of line), each panel's title its class and value.
ROC panels: the curve, its AUROC (with the 95% CI when intervals were computed), the chance
diagonal, and — with patient-bootstrap resamples — the pointwise bootstrap band.
PR panels: the curve as the step function average precision sums (at each recall, the precision
of the highest threshold reaching it: no vertical spikes down at the corners), its AP, the
no-skill line at the class's prevalence (a classifier that guesses has precision = prevalence
at every recall), and with resamples the pointwise patient-bootstrap band.
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

from chexnet_pl.evaluation.auroc import per_class_auroc  # noqa: E402
from chexnet_pl.files import figure_path, save_figure  # noqa: E402
from chexnet_pl.label_sets import labelled  # noqa: E402


def figure_title(figure_name: str, scope: str, images: int, model: str = "") -> str:
    """What a figure's title says: the figure, the images (split or scope, n) and the model
    (left out when not known, e.g. a predictions file without its checkpoint)."""
    parts = [figure_name, scope, f"n = {images:,} images"]
    if model:
        parts.append(f"model: {model}")
    return " · ".join(parts)


def figure_legend(figure: plt.Figure, axes: Sequence, top: float, last: Sequence[str] = ()) -> None:
    """One legend for the whole figure, under its title: every distinct label of ``axes`` (the
    ``last`` ones at the end)."""
    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    order = sorted(range(len(labels)), key=lambda i: labels[i] in last)
    handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    if handles:
        figure.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=9,
                      bbox_to_anchor=(0.5, top), frameon=False)  # fmt: skip


def panel_grid(count: int, columns: int = 5, size: float = 3.2):
    """A figure with ``count`` panels in rows of ``columns`` (the unused ones hidden), its margins
    fixed in inches (room for a title, the figure's legend, axis labels and tick labels):
    written without a layout pass, which costs as much as drawing the figure."""
    rows = math.ceil(count / columns)
    width, height = size * columns, size * rows + 1.1
    figure, axes = plt.subplots(rows, columns, figsize=(width, height), squeeze=False)
    figure.subplots_adjust(left=0.55 / width, right=1 - 0.15 / width, bottom=0.5 / height,
                           top=1 - 1.4 / height, wspace=0.3, hspace=0.55)  # fmt: skip
    for ax in axes.ravel()[count:]:
        ax.axis("off")
    return figure, axes.ravel()


def pr_steps(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The precision-recall curve as the step function average precision sums: the distinct
    recalls ascending (from 0) and, at each, the precision of the highest threshold reaching it
    (lower thresholds at the same recall add only negatives). Drawn with ``steps-pre``, the
    precision of recall ``r[k]`` holds on ``(r[k-1], r[k]]``: sum((r[k] - r[k-1]) * p[k]) is
    scikit-learn's ``average_precision_score``."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(positive, scores)
    frame = pd.DataFrame({"recall": recall, "precision": precision})
    best = frame.groupby("recall", sort=True)["precision"].max()
    return best.index.to_numpy(np.float64), best.to_numpy(np.float64)


def curve_figures(
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    title: str = "",
    patients: np.ndarray | None = None,
    bootstrap_samples: int = 0,
    bootstrap_seed: int = 0,
    confidence: float = 0.95,
    intervals: Mapping[str, tuple[float, float]] | None = None,
    scope: str = "",
    model: str = "",
) -> dict[str, plt.Figure]:
    """The ROC and PR figures (``{"roc": figure, "pr": figure}``), not yet written; ``intervals``
    (class → AUROC CI, as in aucs.csv) go into the ROC panels' titles. ``scope`` (e.g. "test
    split") and ``model`` name the images and the model in the titles (``title``: used as is
    instead)."""
    from sklearn.metrics import average_precision_score, roc_curve

    from chexnet_pl.evaluation.resampling import PatientResamples, pr_band, roc_band

    aurocs = per_class_auroc(scores, labels)
    resamples = None
    if patients is not None and bootstrap_samples > 0:
        resamples = PatientResamples.of(patients, bootstrap_samples, bootstrap_seed)
    band_label = f"{confidence:.0%} CI (patient bootstrap)"
    figures = {}
    for kind in ("roc", "pr"):
        figure, axes = panel_grid(len(class_names))
        for j, (ax, name) in enumerate(zip(axes, class_names, strict=False)):
            known = labelled(labels[:, j])  # the images whose label is known
            positive, class_scores = labels[known, j] > 0.5, scores[known, j]
            heading = name.replace("_", " ")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.tick_params(labelsize=8)
            if positive.all() or not positive.any():
                ax.set_title(heading, fontsize=10)
                ax.text(
                    0.5, 0.5, "undefined\n(no positives\nor negatives)", ha="center", va="center"
                )
                continue
            class_resamples = None
            if resamples is not None:
                class_resamples = (
                    resamples
                    if known.all()
                    else PatientResamples.of(patients[known], bootstrap_samples, bootstrap_seed)
                )
            if kind == "roc":
                fpr, tpr, _ = roc_curve(positive, class_scores)
                low_high = (intervals or {}).get(name)
                ci = (
                    f" ({low_high[0]:.3f}–{low_high[1]:.3f})"
                    if low_high and np.isfinite(low_high).all()
                    else ""
                )
                ax.set_title(f"{heading}\nAUROC {aurocs[j]:.3f}{ci}", fontsize=10)
                ax.plot(fpr, tpr, color="tab:blue", linewidth=1.4, label="ROC curve")
                if class_resamples is not None:
                    grid, low, high = roc_band(class_scores, positive, class_resamples, confidence)
                    ax.fill_between(grid, low, high, color="tab:blue", alpha=0.2, linewidth=0,
                                    label=band_label)  # fmt: skip
                ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8, label="chance")
                ax.set_xlabel("1 - specificity", fontsize=8)
                ax.set_ylabel("sensitivity", fontsize=8)
            else:
                recall, precision = pr_steps(positive, class_scores)
                average_precision = average_precision_score(positive, class_scores)
                prevalence = float(positive.mean())
                ax.set_title(f"{heading}\nAP {average_precision:.3f} (prevalence {prevalence:.3f})",
                             fontsize=10)  # fmt: skip
                ax.plot(recall, precision, drawstyle="steps-pre", color="tab:blue",
                        linewidth=1.4, label="precision-recall curve")  # fmt: skip
                if class_resamples is not None:
                    grid, low, high = pr_band(class_scores, positive, class_resamples, confidence)
                    ax.fill_between(grid, low, high, color="tab:blue", alpha=0.2, linewidth=0,
                                    step="pre", label=band_label)  # fmt: skip
                ax.axhline(prevalence, color="grey", linestyle="--", linewidth=0.9,
                           label="no skill (precision = prevalence)")  # fmt: skip
                ax.set_xlabel("recall (sensitivity)", fontsize=8)
                ax.set_ylabel("precision (PPV)", fontsize=8)
        height = figure.get_size_inches()[1]
        figure_legend(figure, axes, 1 - 0.45 / height)
        name = "ROC curves" if kind == "roc" else "Precision-recall curves"
        heading = title or (figure_title(name, scope, len(scores), model) if scope else "")
        if heading:
            figure.suptitle(heading, y=1 - 0.12 / height, va="top")
        figures[kind] = figure
    return figures


def write_curves(
    figures: Mapping[str, plt.Figure], output_dir: Path, figure_format: str = "png"
) -> dict[str, Path]:
    """Write ``curve_figures``' figures as ``roc_curves.<format>`` and ``pr_curves.<format>``."""
    return {
        kind: save_figure(
            figure, figure_path(output_dir, f"{kind}_curves", figure_format), tight=False
        )  # fmt: skip
        for kind, figure in figures.items()
    }
