"""How well calibrated the probabilities are — expected calibration error (equal-width and
equal-mass bins), Brier score — before and after the scaling ``evaluation.calibrate`` fits on
validation: ``calibration.csv``, ``calibration.json`` and the reliability diagram."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from chexnet_pl.errors import DataError
from chexnet_pl.evaluation.auroc import with_mean
from chexnet_pl.evaluation.calibration import Calibration, CalibrationSettings, fit_calibration
from chexnet_pl.files import write_csv_atomic
from chexnet_pl.label_sets import labelled, mean_row, report_order


def equal_mass_ece(probabilities: np.ndarray, positive: np.ndarray, bins: int) -> float:
    """ECE over bins holding (nearly) the same number of predictions (adaptive ECE); torchmetrics
    and scikit-learn compute equal-width bins only."""
    order = np.argsort(probabilities, kind="stable")
    total = 0.0
    for chunk in np.array_split(order, min(bins, len(order))):
        total += len(chunk) * abs(positive[chunk].mean() - probabilities[chunk].mean())
    return total / len(order)


CALIBRATION_COLUMNS = ("ece_equal_width", "ece_equal_mass", "brier", "prevalence",
                       "mean_probability")  # fmt: skip


def calibration_table(
    scores: np.ndarray, labels: np.ndarray, class_names: Sequence[str], bins: int = 15
) -> pd.DataFrame:
    """Per class (on its labelled images) and for the mean over the findings: ECE (equal width /
    equal mass), Brier."""
    # Imported here: ``Calibration`` (what predict and visualize read) needs neither.
    import torch
    from sklearn.metrics import brier_score_loss
    from torchmetrics.functional.classification import binary_calibration_error

    rows = []
    for j in range(len(class_names)):
        known = labelled(labels[:, j])
        positive = labels[known, j] > 0.5
        probabilities = np.clip(scores[known, j], 0.0, 1.0)
        if not known.any():
            rows.append(dict.fromkeys(CALIBRATION_COLUMNS, np.nan))
            continue
        rows.append(
            {
                "ece_equal_width": float(
                    binary_calibration_error(
                        torch.as_tensor(probabilities),
                        torch.as_tensor(positive.astype(np.int64)),
                        n_bins=bins,
                        norm="l1",
                    )
                ),  # fmt: skip
                "ece_equal_mass": equal_mass_ece(probabilities, positive, bins),
                "brier": float(brier_score_loss(positive.astype(int), probabilities)),
                "prevalence": float(positive.mean()),
                "mean_probability": float(probabilities.mean()),
            }
        )
    table = pd.DataFrame(rows, index=pd.Index(list(class_names), name="class"))
    mean_name = mean_row(class_names)
    table.loc[mean_name] = with_mean(table.to_numpy().T, class_names)[:, -1]
    return table.loc[report_order(class_names, mean_name)]


def format_calibration_line(
    before: pd.DataFrame, after: pd.DataFrame | None, method: str, bins: int, scope: str
) -> str:
    mean_name = next(row for row in before.index if str(row).startswith("Mean ("))
    mean = before.loc[mean_name]
    line = (
        f"Calibration on {scope} (mean over the {mean_name[len('Mean (') : -1]}, {bins} bins): "
        f"ECE equal-mass "
        f"{mean['ece_equal_mass']:.4f}, equal-width {mean['ece_equal_width']:.4f}, "
        f"Brier {mean['brier']:.4f}"
    )
    if after is not None:
        mean = after.loc[mean_name]
        line += (
            f"; after {method} scaling fitted on val: ECE equal-mass {mean['ece_equal_mass']:.4f}, "
            f"equal-width {mean['ece_equal_width']:.4f}, Brier {mean['brier']:.4f}"
        )
    return line


def write_calibration_report(
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    output_dir: Path,
    settings: CalibrationSettings,
    val_scores: np.ndarray | None,
    val_labels: np.ndarray | None,
    scope: str,
    plots: bool,
    model: str = "",
    figure_format: str = "png",
) -> tuple[pd.DataFrame, Calibration | None, str]:
    """``calibration.csv`` (before and, with a method, after scaling fitted on ``val_*``),
    ``calibration.json`` (the parameters), ``reliability.<figure_format>`` (titled with
    ``scope`` and ``model``); returns the table, the fitted calibration and the report line."""
    from chexnet_pl.evaluation.calibration.reliability import reliability_figure, write_reliability
    from chexnet_pl.evaluation.plots import figure_title
    from chexnet_pl.files import figure_path

    method, bins = settings.method, settings.bins
    before = calibration_table(scores, labels, class_names, bins)
    calibration = after = calibrated = None
    if method != "none":
        if val_scores is None or val_labels is None or len(val_scores) == 0:
            raise DataError(
                f"evaluation.calibrate={method} is fitted on validation predictions and there are "
                "none: with preds= give val_preds=preds_val.csv, or use evaluation.calibrate=none"
            )
        calibration = fit_calibration(val_scores, val_labels, class_names, method)
        calibrated = calibration.apply(scores, class_names)
        after = calibration_table(calibrated, labels, class_names, bins)
        calibration.path = calibration.save(output_dir / "calibration.json")
    table = before.copy()
    if after is not None:
        table = table.join(after.drop(columns="prevalence").add_suffix("_calibrated"))
        params = pd.DataFrame(
            {"slope": calibration.slope, "intercept": calibration.intercept},
            index=list(class_names),
        )
        table = table.join(params)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(table, output_dir / "calibration.csv")
    if plots:
        figure = reliability_figure(
            scores, labels, class_names, bins, before, calibrated, after, method,
            title=figure_title("Reliability (equal-mass bins)", scope, len(scores), model),
        )  # fmt: skip
        write_reliability(figure, figure_path(output_dir, "reliability", figure_format))
    return table, calibration, format_calibration_line(before, after, method, bins, scope)
