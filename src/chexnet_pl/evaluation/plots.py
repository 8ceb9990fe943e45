"""ROC and precision-recall curves, one panel per class, as PNG files.

ROC panels: the curve, its AUROC (with the 95% CI when intervals were computed) in the legend,
the chance diagonal, and — with patient-bootstrap resamples — the pointwise bootstrap band.
PR panels: the curve, its average precision in the legend, and the no-skill line at the class's
prevalence (a classifier that guesses has precision = prevalence at every recall).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from chexnet_pl.evaluation.auroc import per_class_auroc  # noqa: E402
from chexnet_pl.files import save_figure  # noqa: E402
from chexnet_pl.labels import labelled  # noqa: E402


def panel_grid(count: int, columns: int = 5, size: float = 3.2):
    """A figure with ``count`` panels in rows of ``columns`` (the unused ones hidden), its margins
    fixed in inches (room for a title, axis labels and tick labels): written without a layout
    pass, which costs as much as drawing the figure."""
    rows = math.ceil(count / columns)
    width, height = size * columns, size * rows + 0.55
    figure, axes = plt.subplots(rows, columns, figsize=(width, height), squeeze=False)
    figure.subplots_adjust(left=0.55 / width, right=1 - 0.15 / width, bottom=0.5 / height,
                           top=1 - 0.75 / height, wspace=0.3, hspace=0.42)  # fmt: skip
    for ax in axes.ravel()[count:]:
        ax.axis("off")
    return figure, axes.ravel()


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
) -> dict[str, plt.Figure]:
    """The ROC and PR figures (``{"roc": figure, "pr": figure}``), not yet written; ``intervals``
    (class → AUROC CI, as in aucs.csv) go into the ROC legends."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

    from chexnet_pl.evaluation.resampling import PatientResamples, roc_band

    aurocs = per_class_auroc(scores, labels)
    resamples = None
    if patients is not None and bootstrap_samples > 0:
        resamples = PatientResamples.of(patients, bootstrap_samples, bootstrap_seed)
    figures = {}
    for kind in ("roc", "pr"):
        figure, axes = panel_grid(len(class_names))
        for j, (ax, name) in enumerate(zip(axes, class_names, strict=False)):
            known = labelled(labels[:, j])  # the images whose label is known
            positive, class_scores = labels[known, j] > 0.5, scores[known, j]
            ax.set_title(name.replace("_", " "), fontsize=10)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.tick_params(labelsize=8)
            if positive.all() or not positive.any():
                ax.text(
                    0.5, 0.5, "undefined\n(no positives\nor negatives)", ha="center", va="center"
                )
                continue
            if kind == "roc":
                fpr, tpr, _ = roc_curve(positive, class_scores)
                low_high = (intervals or {}).get(name)
                ci = (
                    f" ({low_high[0]:.3f}-{low_high[1]:.3f})"
                    if low_high and np.isfinite(low_high).all()
                    else ""
                )
                ax.plot(
                    fpr, tpr, color="tab:blue", linewidth=1.4, label=f"AUROC {aurocs[j]:.3f}{ci}"
                )
                if resamples is not None:
                    class_resamples = (
                        resamples
                        if known.all()
                        else PatientResamples.of(patients[known], bootstrap_samples, bootstrap_seed)
                    )
                    grid, low, high = roc_band(class_scores, positive, class_resamples, confidence)
                    ax.fill_between(grid, low, high, color="tab:blue", alpha=0.2, linewidth=0,
                                    label=f"{confidence:.0%} CI (patient bootstrap)")  # fmt: skip
                ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8, label="chance")
                ax.set_xlabel("1 - specificity", fontsize=8)
                ax.set_ylabel("sensitivity", fontsize=8)
                ax.legend(loc="lower right", fontsize=7)
            else:
                precision, recall, _ = precision_recall_curve(positive, class_scores)
                average_precision = average_precision_score(positive, class_scores)
                ax.step(recall, precision, where="post", color="tab:blue", linewidth=1.4,
                        label=f"AP {average_precision:.3f}")  # fmt: skip
                prevalence = float(positive.mean())
                ax.axhline(prevalence, color="grey", linestyle="--", linewidth=0.9,
                           label=f"no skill (prevalence {prevalence:.3f})")  # fmt: skip
                ax.set_xlabel("recall (sensitivity)", fontsize=8)
                ax.set_ylabel("precision (PPV)", fontsize=8)
                ax.legend(loc="best", fontsize=7)  # PR curves fill the top left or the top right
        if title:
            figure.suptitle(title)
        figures[kind] = figure
    return figures


def write_curves(figures: Mapping[str, plt.Figure], output_dir: Path) -> dict[str, Path]:
    """Write ``curve_figures``' figures as ``roc_curves.png`` and ``pr_curves.png``."""
    return {
        kind: save_figure(figure, Path(output_dir) / f"{kind}_curves.png", tight=False)
        for kind, figure in figures.items()
    }
