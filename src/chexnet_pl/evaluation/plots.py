"""ROC and precision-recall curves, one panel per class, as PNG files."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from chexnet_pl.evaluation.auroc import per_class_auroc  # noqa: E402
from chexnet_pl.labels import labelled  # noqa: E402


def save_figure(figure, path: str | Path, title: str | None = None, title_size=None) -> Path:
    """Title, lay out, write (80 dpi PNG, folders made) and close a figure: every plot file."""
    path = Path(path)
    if title:
        figure.suptitle(title, fontsize=title_size)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def _grid(count: int):
    columns = 5
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.ravel()[count:]:
        ax.axis("off")
    return figure, axes.ravel()


def plot_curves(
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    output_dir: Path,
    title: str = "",
) -> dict[str, Path]:
    """Write ``roc_curves.png`` and ``pr_curves.png``; a class without positives gets an empty panel."""
    aurocs = per_class_auroc(scores, labels)
    paths = {}
    for kind in ("roc", "pr"):
        figure, axes = _grid(len(class_names))
        for j, (ax, name) in enumerate(zip(axes, class_names, strict=False)):
            known = labelled(labels[:, j])
            positive, class_scores = labels[known, j] > 0.5, scores[known, j]
            ax.set_title(name.replace("_", " "), fontsize=10)
            if positive.all() or not positive.any():
                ax.text(
                    0.5, 0.5, "undefined\n(no positives\nor negatives)", ha="center", va="center"
                )
                continue
            if kind == "roc":
                fpr, tpr, _ = roc_curve(positive, class_scores)
                ax.plot(fpr, tpr, label=f"AUROC {aurocs[j]:.3f}")
                ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
                ax.set_xlabel("1 - specificity", fontsize=8)
                ax.set_ylabel("sensitivity", fontsize=8)
            else:
                precision, recall, _ = precision_recall_curve(positive, class_scores)
                ax.plot(recall, precision, label=f"prevalence {positive.mean():.3f}")
                ax.set_xlabel("recall", fontsize=8)
                ax.set_ylabel("precision", fontsize=8)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.legend(loc="lower right" if kind == "roc" else "upper right", fontsize=8)
        paths[kind] = save_figure(figure, Path(output_dir) / f"{kind}_curves.png", title)
    return paths
