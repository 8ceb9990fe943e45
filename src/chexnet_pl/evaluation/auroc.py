"""Exact AUROC by ranks, with per-sample weights so a bootstrap costs one sort per class."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def weighted_auroc(
    scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """AUROC of one class for each row of ``weights`` (shape B×N; None means one unweighted row).

    The Mann-Whitney statistic with ties counted half, as scikit-learn's ``roc_auc_score``.
    A weight is how many times a sample is drawn; a row with no positive or no negative
    weight gives NaN (undefined). A NaN label (not known for that image) weighs nothing.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    positive = labels > 0.5
    if weights is None:
        weights = np.ones((1, len(scores)))
    if np.isnan(labels).any():
        weights = np.asarray(weights, dtype=np.float64) * ~np.isnan(labels)
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    w = np.asarray(weights, dtype=np.float64)[:, order]
    pos = np.add.reduceat(np.where(positive[order], w, 0.0), starts, axis=1)
    neg = np.add.reduceat(np.where(positive[order], 0.0, w), starts, axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    numerator = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    denominator = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def per_class_auroc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUROC of every column (NaN where undefined)."""
    return np.array([weighted_auroc(scores[:, j], labels[:, j])[0] for j in range(scores.shape[1])])


def mean_over(
    values: np.ndarray, class_names: Sequence[str], included: Sequence[str]
) -> np.ndarray:
    """Mean over the columns named in ``included`` (last axis), ignoring undefined ones."""
    index = [i for i, name in enumerate(class_names) if name in included]
    chosen = np.asarray(values)[..., index]
    with np.errstate(invalid="ignore"):
        counts = np.sum(~np.isnan(chosen), axis=-1)
        return np.where(counts > 0, np.nansum(chosen, axis=-1) / np.maximum(counts, 1), np.nan)


def bootstrap_auroc(
    scores: np.ndarray,
    labels: np.ndarray,
    patients: np.ndarray,
    samples: int = 1000,
    seed: int = 0,
    chunk: int = 100,
) -> np.ndarray:
    """Per-class AUROC on ``samples`` resamples of *patients* with replacement (B × C).

    All images of a drawn patient enter together, as often as the patient is drawn, so the
    interval reflects that images of one patient are not independent.
    """
    codes, _ = pd.factorize(np.asarray(patients))
    num_patients = int(codes.max()) + 1
    rng = np.random.default_rng(seed)
    results = []
    for start in range(0, samples, chunk):
        size = min(chunk, samples - start)
        draws = rng.integers(0, num_patients, size=(size, num_patients))
        flat = draws + (np.arange(size) * num_patients)[:, None]
        counts = np.bincount(flat.ravel(), minlength=size * num_patients).reshape(
            size, num_patients
        )
        weights = counts[:, codes]
        results.append(
            np.stack(
                [
                    weighted_auroc(scores[:, j], labels[:, j], weights)
                    for j in range(scores.shape[1])
                ],
                axis=1,
            )
        )
    return np.concatenate(results, axis=0)
