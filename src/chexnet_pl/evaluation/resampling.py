"""The statistics engine: patient-bootstrap resamples, the AUROC of many groups of images on every
resample at once, percentile intervals, ROC and precision-recall bands. Every interval of an evaluation comes
from here: per class (``class_aurocs``), per subgroup, per expert-label set, and the paired
difference of two models (the same draws for both).

A resample draws patients with replacement; an image's weight is how often its patient was
drawn. Everything a group's weighted AUROC needs is a sum of per-patient counts: per distinct
positive score, the positive images there, the negatives tied with it, the negatives between it
and the next lower one. Those counts form one sparse (rows × patients) matrix per class and
grouping, built once; a block of resamples is then one sparse × dense product and a running sum,
so subgroup intervals on the 25,596-image test split cost seconds (``benchmarks/subgroups.py``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

from chexnet_pl.label_sets import labelled


@dataclass(frozen=True)
class PatientResamples:
    """Per-image patient codes, and blocks of per-patient draw counts."""

    codes: np.ndarray  # image → patient 0..P-1
    num_patients: int
    samples: int
    seed: int = 0
    chunk: int = 250

    @classmethod
    def of(cls, patients: np.ndarray, samples: int, seed: int = 0) -> PatientResamples:
        codes, uniques = pd.factorize(np.asarray(patients))
        return cls(codes.astype(np.int64), len(uniques), int(samples), int(seed))

    def blocks(self) -> Iterator[np.ndarray]:
        """patients × B count matrices (float32: small whole numbers are exact), ``samples``
        columns in all, the same for the same seed."""
        rng = np.random.default_rng(self.seed)
        for start in range(0, self.samples, self.chunk):
            size = min(self.chunk, self.samples - start)
            draws = rng.integers(0, self.num_patients, size=(size, self.num_patients))
            flat = draws + (np.arange(size) * self.num_patients)[:, None]
            counts = np.bincount(flat.ravel(), minlength=size * self.num_patients)
            yield np.ascontiguousarray(counts.reshape(size, self.num_patients).T, dtype=np.float32)


class GroupedAuroc:
    """AUROC of one class within each group of images, for the data as is and for resamples.

    ``groups``: a code ``0..num_groups-1`` per image (``-1``: in no group). The Mann-Whitney
    statistic with ties counted half, as scikit-learn's ``roc_auc_score``; NaN where a group has
    no positive or no negative weight.
    """

    def __init__(
        self,
        scores: np.ndarray,
        positive: np.ndarray,
        groups: np.ndarray,
        num_groups: int,
        patient_codes: np.ndarray,
        num_patients: int,
    ) -> None:
        scores = np.asarray(scores, dtype=np.float64)
        positive = np.asarray(positive) > 0.5
        groups = np.asarray(groups)
        self.num_groups = num_groups
        rows, cols, present, starts = [], [], [], []
        offset = 0
        for g in range(num_groups):
            members = np.flatnonzero(groups == g)
            pos, neg = members[positive[members]], members[~positive[members]]
            if len(pos) == 0 or len(neg) == 0:
                continue
            levels = np.unique(scores[pos])  # the distinct positive scores, ascending
            k = len(levels)
            # A negative counts as "below" every level above it: bin = how many levels are <= it.
            neg_bin = np.searchsorted(levels, scores[neg], side="right")
            tied = (neg_bin > 0) & (levels[np.maximum(neg_bin - 1, 0)] == scores[neg])
            below_rows = neg_bin[neg_bin < k]
            entries = (
                (np.searchsorted(levels, scores[pos]), patient_codes[pos], 0),  # positives
                (neg_bin[tied] - 1, patient_codes[neg[tied]], 1),  # negatives tied with a level
                (below_rows, patient_codes[neg[neg_bin < k]], 2),  # negatives just below a level
            )
            for level_rows, patient, kind in entries:
                rows.append(offset + kind * k + level_rows)
                cols.append(patient)
            rows.append(np.full(len(neg), offset + 3 * k))  # all negatives of the group
            cols.append(patient_codes[neg])
            present.append(g)
            starts.append((offset, k))
            offset += 3 * k + 1
        self.present = np.asarray(present, dtype=np.int64)
        self.layout = starts
        rows_all = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        cols_all = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        self.matrix = sparse.csr_matrix(
            (np.ones(len(rows_all), dtype=np.float32), (rows_all, cols_all)),
            shape=(offset, num_patients),
        )  # duplicate (row, patient) entries are summed: counts per patient
        self.matrix.sum_duplicates()
        self._unweighted = np.ones((num_patients, 1), dtype=np.float32)

    def point(self) -> np.ndarray:
        """Per group, the AUROC of the data as is (every patient once)."""
        return self.resampled(self._unweighted)[0]

    def resampled(self, counts: np.ndarray) -> np.ndarray:
        """B × groups for draw counts ``counts`` (patients × B)."""
        out = np.full((counts.shape[1], self.num_groups), np.nan)
        if not len(self.present):
            return out
        sums = (self.matrix @ counts).astype(np.float64)  # rows × B; exact: whole numbers < 2**24
        for g, (start, k) in zip(self.present, self.layout, strict=True):
            positives = sums[start : start + k]
            tied = sums[start + k : start + 2 * k]
            below = np.cumsum(sums[start + 2 * k : start + 3 * k], axis=0)
            negatives = sums[start + 3 * k]
            numerator = np.einsum("kb,kb->b", positives, below + 0.5 * tied)
            denominator = positives.sum(axis=0) * negatives
            with np.errstate(invalid="ignore", divide="ignore"):
                out[:, g] = np.where(denominator > 0, numerator / denominator, np.nan)
        return out


def aurocs_of(
    plans: Sequence[GroupedAuroc], resamples: PatientResamples
) -> tuple[np.ndarray, np.ndarray]:
    """The plans' group AUROCs side by side (plan after plan): on the data as is, and on each of
    ``resamples`` (B × those), every plan on the same draws."""
    point = np.concatenate([plan.point() for plan in plans])
    blocks = [np.column_stack([plan.resampled(c) for plan in plans]) for c in resamples.blocks()]
    return point, np.concatenate(blocks) if blocks else np.empty((0, len(point)))


def class_aurocs(
    scores: np.ndarray, labels: np.ndarray, resamples: PatientResamples
) -> tuple[np.ndarray, np.ndarray]:
    """Per class (column), the AUROC on the images whose label is known (NaN: not labelled, in
    no group): on the data as is (C) and on each patient resample (B × C)."""
    labels = np.asarray(labels, dtype=np.float64)
    known = labelled(labels)
    plans = [
        GroupedAuroc(scores[:, j], labels[:, j] > 0.5, np.where(known[:, j], 0, -1), 1,
                     resamples.codes, resamples.num_patients)
        for j in range(labels.shape[1])
    ]  # fmt: skip
    return aurocs_of(plans, resamples)


def percentile_interval(
    samples: np.ndarray, confidence: float, defined: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval along axis 0, ignoring NaN resamples; NaN where ``defined`` is False
    (and everywhere when there are no resamples)."""
    samples = np.asarray(samples, dtype=np.float64)
    if not len(samples):
        samples = np.full((1, *samples.shape[1:]), np.nan)
    tail = (1 - confidence) / 2 * 100
    with warnings.catch_warnings():  # an all-NaN column is an undefined value: NaN is right
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(samples, [tail, 100 - tail], axis=0)
    if defined is not None:
        low, high = np.where(defined, low, np.nan), np.where(defined, high, np.nan)
    return low, high


def roc_band(
    scores: np.ndarray,
    positive: np.ndarray,
    resamples: PatientResamples,
    confidence: float = 0.95,
    levels: int = 400,
    grid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A pointwise bootstrap band of one class's ROC curve: (false-positive-rate grid, low, high
    sensitivity at each grid point) over the patient resamples.

    Each resample's curve is the ROC of the data with images weighted by how often their patient
    was drawn, at ``levels`` score thresholds (the scores' quantiles), joined by straight lines
    (the operating points between two thresholds are reachable), read at the grid points. Per
    class and resample block it is two sparse (thresholds × patients) products, as for the
    subgroup AUROCs."""
    grid = np.linspace(0.0, 1.0, 101) if grid is None else np.asarray(grid, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    is_positive = np.asarray(positive) > 0.5
    ascending = np.unique(np.quantile(scores, np.linspace(0.0, 1.0, levels)))
    # Level k (0 = the highest threshold): an image counts at levels k and below when its score
    # is at least that threshold, i.e. it enters the running sums at the first such level.
    level = len(ascending) - np.searchsorted(ascending, scores, side="right")
    shape = (len(ascending), resamples.num_patients)
    counts_at = {
        kind: sparse.csr_matrix(
            (np.ones(int(mask.sum()), np.float32), (level[mask], resamples.codes[mask])),
            shape=shape,
        )
        for kind, mask in (("positive", is_positive), ("negative", ~is_positive))
    }
    curves = []
    for counts in resamples.blocks():  # patients × B
        tp = np.cumsum(counts_at["positive"] @ counts, axis=0, dtype=np.float64)
        fp = np.cumsum(counts_at["negative"] @ counts, axis=0, dtype=np.float64)
        usable = (tp[-1] > 0) & (fp[-1] > 0)  # a resample without positives or negatives: no curve
        zero = np.zeros((1, int(usable.sum())))
        tpr = np.vstack([zero, tp[:, usable] / tp[-1, usable]])  # from the point (0, 0)
        fpr = np.vstack([zero, fp[:, usable] / fp[-1, usable]])
        curves.append(_interpolate_columns(fpr, tpr, grid))
    if not curves or not sum(len(c) for c in curves):
        nothing = np.full(len(grid), np.nan)
        return grid, nothing, nothing
    low, high = percentile_interval(np.concatenate(curves), confidence)
    return grid, low, high


def _interpolate_columns(x: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """``np.interp(grid, x[:, b], y[:, b])`` for every column b (x non-decreasing): B × grid. At a
    vertical step (equal x) the highest y is taken, as a ROC curve is read."""
    right = np.clip((x[None, :, :] <= grid[:, None, None]).sum(axis=1), 1, len(x) - 1)  # grid × B
    left = right - 1
    x0, x1 = np.take_along_axis(x, left, 0), np.take_along_axis(x, right, 0)
    y0, y1 = np.take_along_axis(y, left, 0), np.take_along_axis(y, right, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(x1 > x0, (grid[:, None] - x0) / (x1 - x0), 1.0)
    return (y0 + np.clip(share, 0, 1) * (y1 - y0)).T


def pr_band(
    scores: np.ndarray,
    positive: np.ndarray,
    resamples: PatientResamples,
    confidence: float = 0.95,
    levels: int = 400,
    grid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A pointwise bootstrap band of one class's precision-recall curve: (recall grid, low, high
    precision at each grid recall) over the patient resamples.

    Each resample's curve is the PR step function of the data with images weighted by how often
    their patient was drawn, at the positives' distinct scores as thresholds (the precision at a
    recall is highest at such a score; the ``levels`` quantiles of them when there are more), in
    sparse products as ``roc_band``: at a grid recall, the precision of the highest threshold
    whose recall reaches it (as the curve itself is drawn)."""
    grid = np.linspace(0.01, 1.0, 100) if grid is None else np.asarray(grid, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    is_positive = np.asarray(positive) > 0.5
    ascending = np.unique(scores[is_positive])
    if len(ascending) > levels:
        ascending = np.unique(np.quantile(ascending, np.linspace(0.0, 1.0, levels)))
    level = len(ascending) - np.searchsorted(ascending, scores, side="right")
    counted = level < len(ascending)  # images under the lowest positive score: never called
    shape = (len(ascending), resamples.num_patients)
    counts_at = {
        kind: sparse.csr_matrix(
            (np.ones(int(mask.sum()), np.float32), (level[mask], resamples.codes[mask])),
            shape=shape,
        )
        for kind, mask in (
            ("positive", is_positive & counted),
            ("negative", ~is_positive & counted),
        )
    }
    curves = []
    for counts in resamples.blocks():  # patients × B
        tp = np.cumsum(counts_at["positive"] @ counts, axis=0, dtype=np.float64)
        fp = np.cumsum(counts_at["negative"] @ counts, axis=0, dtype=np.float64)
        usable = tp[-1] > 0  # a resample without positives: no curve
        tp, fp = tp[:, usable], fp[:, usable]
        recall = tp / tp[-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(tp + fp > 0, tp / (tp + fp), 1.0)
        # The first level (highest threshold) whose recall reaches each grid point: grid × B.
        first = (recall[None, :, :] < grid[:, None, None] - 1e-12).sum(axis=1)
        first = np.minimum(first, len(recall) - 1)
        curves.append(np.take_along_axis(precision, first, 0).T)
    if not curves or not sum(len(c) for c in curves):
        nothing = np.full(len(grid), np.nan)
        return grid, nothing, nothing
    low, high = percentile_interval(np.concatenate(curves), confidence)
    return grid, low, high
