"""AUROC as the reports use it — per class, weighted, patient-bootstrapped — and the mean over the
findings that every AUROC table ends with. All of it is computed by ``resampling``'s one engine
(``GroupedAuroc``): the Mann-Whitney statistic with ties counted half, as scikit-learn's
``roc_auc_score``; NaN where undefined (no positive or no negative weight). And the per-class
AUROC table of a training run's logged metrics (``auroc_table``), as a DataFrame and text."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from chexnet_pl.evaluation.resampling import GroupedAuroc, PatientResamples, class_aurocs
from chexnet_pl.label_sets import finding_names, labelled, mean_row


def weighted_auroc(
    scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """AUROC of one class for each row of ``weights`` (shape B×N; None means one unweighted row).

    A weight is how many times a sample is drawn (a whole number); a NaN label (not known for
    that image) weighs nothing.
    """
    labels = np.asarray(labels, dtype=np.float64)
    count = len(labels)
    plan = GroupedAuroc(scores, labels > 0.5, np.where(labelled(labels), 0, -1), 1,
                        np.arange(count), count)  # fmt: skip
    if weights is None:
        return plan.point()
    return plan.resampled(np.asarray(weights, dtype=np.float32).T)[:, 0]


def per_class_auroc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUROC of every column on its labelled images (NaN where undefined)."""
    return class_aurocs(scores, labels, PatientResamples.of(np.arange(len(scores)), 0))[0]


def bootstrap_auroc(
    scores: np.ndarray, labels: np.ndarray, patients: np.ndarray, samples: int = 1000, seed: int = 0
) -> np.ndarray:
    """Per-class AUROC on ``samples`` resamples of *patients* with replacement (B × C).

    All images of a drawn patient enter together, as often as the patient is drawn, so the
    interval reflects that images of one patient are not independent.
    """
    return class_aurocs(scores, labels, PatientResamples.of(patients, samples, seed))[1]


def mean_over(
    values: np.ndarray, class_names: Sequence[str], included: Sequence[str]
) -> np.ndarray:
    """Mean over the columns named in ``included`` (last axis), ignoring undefined ones."""
    index = [i for i, name in enumerate(class_names) if name in included]
    chosen = np.asarray(values, dtype=np.float64)[..., index]
    with np.errstate(invalid="ignore"):
        counts = np.sum(~np.isnan(chosen), axis=-1)
        return np.where(counts > 0, np.nansum(chosen, axis=-1) / np.maximum(counts, 1), np.nan)


def with_mean(
    values: np.ndarray, class_names: Sequence[str], included: Sequence[str] | None = None
) -> np.ndarray:
    """``values`` (one column per class, last axis) and one more column: their mean over
    ``included`` (default: the findings, ``No Finding`` apart) — a report's mean row, for point
    values and for every resample alike."""
    values = np.asarray(values, dtype=np.float64)
    included = finding_names(class_names) if included is None else included
    return np.concatenate([values, mean_over(values, class_names, included)[..., None]], axis=-1)


def auroc_table(
    metrics: Mapping[str, float],
    class_names: Sequence[str],
    stages: Sequence[str] = ("val", "test"),
) -> pd.DataFrame:
    """One row per class plus the mean over the findings; one column per stage that was logged.

    A class whose AUROC is undefined in a stage (no positives or negatives) is NaN there.
    """
    columns = {}
    for stage in stages:
        if f"{stage}/auroc" not in metrics and not any(
            f"{stage}/auroc_{n}" in metrics for n in class_names
        ):
            continue
        values = [float(metrics.get(f"{stage}/auroc_{name}", math.nan)) for name in class_names]
        values.append(float(metrics.get(f"{stage}/auroc", math.nan)))
        columns[f"{stage}_auroc"] = values
    table = pd.DataFrame(columns, index=[*class_names, mean_row(class_names)])
    table.index.name = "class"
    return table


def format_auroc_table(table: pd.DataFrame) -> str:
    """Fixed-width text; undefined values print as 'undefined', not NaN."""
    shown = table.rename_axis(None)  # no stray "class" row under the header
    return shown.to_string(float_format=lambda v: f"{v:.4f}", na_rep="undefined")
