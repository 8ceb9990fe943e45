"""Calibration: expected calibration error (equal-width and equal-mass bins), Brier score,
reliability diagrams, and per-class temperature / Platt scaling fitted on validation predictions.

Both scalings act on the logit z of a probability: Platt ``σ(a·z + b)``, temperature ``σ(z / T)``
(``a = 1/T``, ``b = 0``). Both are a one-feature logistic regression (scikit-learn), with or
without intercept; the parameters are written as JSON that ``predict`` / ``visualize`` read
with ``calibration=<file>``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss
from torchmetrics.functional.classification import binary_calibration_error

from chexnet_pl.errors import DataError
from chexnet_pl.evaluation.auroc import mean_over
from chexnet_pl.labels import FINDINGS, NO_FINDING
from chexnet_pl.validation import Problems

log = logging.getLogger(__name__)

CALIBRATION_METHODS = ("none", "temperature", "platt")
MEAN_ROW = "Mean (14 findings)"
_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] before the logit
FORMAT = "chexnet_pl.calibration/1"


@dataclass(frozen=True)
class CalibrationSettings:
    """``evaluation.calibrate`` and ``evaluation.calibration_bins`` (conf/evaluation/default.yaml)."""

    method: str
    bins: int

    def __post_init__(self) -> None:
        problems = Problems("evaluation")
        problems.choice("calibrate", self.method, CALIBRATION_METHODS)
        problems.number("calibration_bins", self.bins, minimum=1, integer=True)
        problems.raise_if_any()


def logit(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


@dataclass
class Calibration:
    """Per-class ``σ(slope · logit(p) + intercept)``."""

    method: str
    class_names: list[str]
    slope: np.ndarray
    intercept: np.ndarray
    fitted_on: str = ""
    path: Path | None = field(default=None, compare=False)

    def apply(self, probabilities: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
        """Calibrated probabilities for columns ``class_names`` (each must be in this file)."""
        index = self._index(class_names)
        z = logit(probabilities) * self.slope[index] + self.intercept[index]
        return 1.0 / (1.0 + np.exp(-z))

    def _index(self, class_names: Sequence[str]) -> list[int]:
        missing = [n for n in class_names if n not in self.class_names]
        if missing:
            where = f" ({self.path})" if self.path else ""
            raise DataError(
                f"the calibration{where} has no parameters for {missing}; it covers "
                f"{self.class_names}. Use the calibration.json of an evaluation of this model"
            )
        return [self.class_names.index(n) for n in class_names]

    @property
    def label(self) -> str:
        """What the prediction tables say: the method and the file."""
        return f"{self.method} ({self.path.name})" if self.path else self.method

    def to_json(self) -> dict:
        classes = {}
        for name, a, b in zip(self.class_names, self.slope, self.intercept, strict=True):
            entry = {"slope": float(a), "intercept": float(b)}
            if self.method == "temperature":
                entry = {"temperature": float(1 / a) if a != 0 else math.inf, **entry}
            classes[name] = entry
        return {"format": FORMAT, "method": self.method, "fitted_on": self.fitted_on,
                "formula": "sigmoid(slope * logit(p) + intercept)", "classes": classes}  # fmt: skip

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1))
        return path

    @classmethod
    def read(cls, path: str | Path) -> Calibration:
        """Read a calibration file an evaluation wrote; errors name the file and what is wrong."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise DataError(f"calibration file not found: {path} (calibration=)")
        try:
            data = json.loads(path.read_text())
            classes = data["classes"]
            method = data["method"]
            slope = np.array([float(classes[n]["slope"]) for n in classes])
            intercept = np.array([float(classes[n]["intercept"]) for n in classes])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"{path} is not a calibration file an evaluation wrote ({type(exc).__name__}: "
                f"{exc}); give the calibration.json of an evaluation run with evaluation.calibrate="
            ) from exc
        if method not in CALIBRATION_METHODS[1:] or not np.isfinite(slope).all():
            raise DataError(f"{path}: method {method!r} or its parameters are not usable")
        return cls(method, list(classes), slope, intercept, data.get("fitted_on", ""), path)


def fit_calibration(
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    method: str,
    fitted_on: str = "val",
) -> Calibration:
    """Per class, temperature (no intercept) or Platt (slope and intercept) by maximum likelihood
    on these predictions. A class without positives or negatives keeps the identity."""
    if method not in CALIBRATION_METHODS[1:]:
        raise DataError(f"evaluation.calibrate={method!r}; use one of {CALIBRATION_METHODS}")
    slope, intercept = np.ones(len(class_names)), np.zeros(len(class_names))
    identity = []
    for j, name in enumerate(class_names):
        positive = labels[:, j] > 0.5
        if positive.all() or not positive.any():
            identity.append(name)
            continue
        # C large: effectively unregularised maximum likelihood, as temperature / Platt scaling.
        model = LogisticRegression(C=1e6, fit_intercept=method == "platt", max_iter=1000)
        model.fit(logit(scores[:, j])[:, None], positive.astype(int))
        slope[j] = float(model.coef_[0, 0])
        intercept[j] = float(model.intercept_[0]) if method == "platt" else 0.0
        if slope[j] <= 0:
            log.warning(
                "%s: the fitted %s slope is %.3f (not positive): its scores do not rank cases "
                "on %s; calibrated probabilities will reverse its order", name, method, slope[j],
                fitted_on,
            )  # fmt: skip
    if identity:
        log.warning(
            "no positives or no negatives on %s for %s: left uncalibrated", fitted_on, identity
        )
    return Calibration(method, list(class_names), slope, intercept, fitted_on)


def equal_mass_ece(probabilities: np.ndarray, positive: np.ndarray, bins: int) -> float:
    """ECE over bins holding (nearly) the same number of predictions (adaptive ECE); torchmetrics
    and scikit-learn compute equal-width bins only."""
    order = np.argsort(probabilities, kind="stable")
    total = 0.0
    for chunk in np.array_split(order, min(bins, len(order))):
        total += len(chunk) * abs(positive[chunk].mean() - probabilities[chunk].mean())
    return total / len(order)


def calibration_table(
    scores: np.ndarray, labels: np.ndarray, class_names: Sequence[str], bins: int = 15
) -> pd.DataFrame:
    """Per class and for the mean over the 14 findings: ECE (equal width / equal mass), Brier."""
    rows = []
    for j in range(len(class_names)):
        positive = labels[:, j] > 0.5
        probabilities = np.clip(scores[:, j], 0.0, 1.0)
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
    table.loc[MEAN_ROW] = [
        float(mean_over(table[c].to_numpy(), class_names, FINDINGS)) for c in table.columns
    ]
    order = [n for n in class_names if n != NO_FINDING] + [MEAN_ROW]
    return table.loc[order + [n for n in class_names if n == NO_FINDING]]


def format_calibration_line(
    before: pd.DataFrame, after: pd.DataFrame | None, method: str, bins: int, split: str
) -> str:
    mean = before.loc[MEAN_ROW]
    line = (
        f"Calibration on {split} (mean over the 14 findings, {bins} bins): ECE equal-mass "
        f"{mean['ece_equal_mass']:.4f}, equal-width {mean['ece_equal_width']:.4f}, "
        f"Brier {mean['brier']:.4f}"
    )
    if after is not None:
        mean = after.loc[MEAN_ROW]
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
    split: str,
    plots: bool,
) -> tuple[pd.DataFrame, Calibration | None, str]:
    """``calibration.csv`` (before and, with a method, after scaling fitted on ``val_*``),
    ``calibration.json`` (the parameters), ``reliability.png``; returns the table, the fitted
    calibration and the report line."""
    from chexnet_pl.evaluation.reliability import plot_reliability

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
    table.to_csv(output_dir / "calibration.csv")
    if plots:
        plot_reliability(
            scores, labels, class_names, output_dir / "reliability.png", bins, before, calibrated,
            after, method, title=f"{split} split, {len(scores)} images: reliability (equal-mass bins)",
        )  # fmt: skip
    return table, calibration, format_calibration_line(before, after, method, bins, split)
