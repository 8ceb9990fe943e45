"""Paired comparison of two models' predictions on the same images: per finding and for the mean,
ΔAUROC (A − B) with a paired patient-bootstrap CI, and DeLong's test.

DeLong et al. (Biometrics 1988), in the midrank form of Sun & Xu (IEEE SPL 2014): each AUROC is
the mean of its structural components (placement values), and the covariance of two AUROCs on the
same cases follows from the components' covariances. DeLong treats images as independent; the
bootstrap resamples patients, so with several images per patient its interval is the safer one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata

from chexnet_pl.data.nih_table import IMAGE, PATIENT
from chexnet_pl.errors import DataError
from chexnet_pl.evaluation.auroc import with_mean
from chexnet_pl.evaluation.predictions import prob_columns
from chexnet_pl.evaluation.report import whole_numbers
from chexnet_pl.evaluation.resampling import PatientResamples, class_aurocs, percentile_interval
from chexnet_pl.files import save_figure, write_csv_atomic
from chexnet_pl.label_sets import labelled, mean_row, report_order

log = logging.getLogger(__name__)

COMPARE_ON = ("same", "intersection")


@dataclass(frozen=True)
class DeLong:
    auroc_a: float
    auroc_b: float
    variance: float  # of auroc_a − auroc_b
    z: float
    p_value: float


def placement_values(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Structural components by midranks: V10 per positive (share of negatives it outscores,
    ties half) and V01 per negative (share of positives that outscore it, ties half)."""
    scores = np.asarray(scores, dtype=np.float64)
    pos, neg = scores[positive], scores[~positive]
    m, n = len(pos), len(neg)
    combined = rankdata(np.concatenate([pos, neg]))
    v10 = (combined[:m] - rankdata(pos)) / n
    v01 = 1.0 - (combined[m:] - rankdata(neg)) / m
    return v10, v01


def delong_test(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray) -> DeLong:
    """Two-sided DeLong test of AUROC(a) = AUROC(b) on the same cases; NaN where undefined."""
    positive = np.asarray(labels) > 0.5
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:  # the components' variances need two of each
        return DeLong(np.nan, np.nan, np.nan, np.nan, np.nan)
    v10_a, v01_a = placement_values(scores_a, positive)
    v10_b, v01_b = placement_values(scores_b, positive)
    s10 = np.cov(np.vstack([v10_a, v10_b]))
    s01 = np.cov(np.vstack([v01_a, v01_b]))
    covariance = s10 / m + s01 / n
    variance = float(covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1])
    auroc_a, auroc_b = float(v10_a.mean()), float(v10_b.mean())
    delta = auroc_a - auroc_b
    if variance <= 1e-15:  # identical rankings: no evidence of a difference
        z = 0.0 if abs(delta) < 1e-12 else np.sign(delta) * np.inf
    else:
        z = delta / np.sqrt(variance)
    return DeLong(auroc_a, auroc_b, variance, float(z), float(2 * norm.sf(abs(z))))


def align_predictions(
    a: pd.DataFrame, b: pd.DataFrame, on: str, names: tuple[str, str] = ("A", "B")
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both tables on the same images in the same order; a mismatch is an error unless
    ``on="intersection"``, which keeps the shared images (and says how many were left out)."""
    if on not in COMPARE_ON:
        raise DataError(f"compare_on={on!r}; use one of {COMPARE_ON}")
    images_a, images_b = pd.Index(a[IMAGE]), pd.Index(b[IMAGE])
    shared = images_a.intersection(images_b, sort=False)
    only_a, only_b = len(images_a) - len(shared), len(images_b) - len(shared)
    if only_a or only_b:
        parts = [
            f"{count:,} only in {name}, e.g. {extra[:2].tolist()}"
            for name, count, extra in (
                (names[0], only_a, images_a.difference(shared)),
                (names[1], only_b, images_b.difference(shared)),
            )
            if count
        ]
        summary = (
            f"{names[0]} has {len(images_a):,} images, {names[1]} {len(images_b):,}; they share "
            f"{len(shared):,} ({'; '.join(parts)})"
        )
        if on == "same":
            raise DataError(
                f"the two predictions cover different images: {summary}. Set "
                "compare_on=intersection to compare on the shared images"
            )
        log.warning("compare_on=intersection: %s", summary)
    if len(shared) == 0:
        raise DataError(f"{names[0]} and {names[1]} share no image; nothing to compare")
    return (
        a.set_index(IMAGE).loc[shared].reset_index(),
        b.set_index(IMAGE).loc[shared].reset_index(),
    )


def compare_predictions(
    a: pd.DataFrame,
    b: pd.DataFrame,
    truth: pd.DataFrame,
    class_names: Sequence[str],
    bootstrap_samples: int = 1000,
    bootstrap_seed: int = 0,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Per class and for the mean over the findings: AUROC of A and of B, Δ = A − B with its
    paired patient-bootstrap CI and bootstrap p-value, and DeLong's p-value (per class only:
    the mean's AUROCs have different positives per class, outside DeLong's setting). Each class
    uses the images where its label is known."""
    rows = truth.loc[a[IMAGE]]
    values = rows[list(class_names)].to_numpy(np.float64)
    known, labels = labelled(values), values > 0.5
    scores_a = a[prob_columns(class_names)].to_numpy(np.float64)
    scores_b = b[prob_columns(class_names)].to_numpy(np.float64)
    # the same patient draws for both models: a paired bootstrap
    resamples = PatientResamples.of(rows[PATIENT].to_numpy(), bootstrap_samples, bootstrap_seed)
    (point_a, sampled_a), (point_b, sampled_b) = (
        class_aurocs(scores, values, resamples) for scores in (scores_a, scores_b)
    )
    table = pd.DataFrame(
        {"auroc_a": with_mean(point_a, class_names), "auroc_b": with_mean(point_b, class_names)},
        index=pd.Index([*class_names, mean_row(class_names)], name="class"),
    )
    table["delta"] = table["auroc_a"] - table["auroc_b"]
    if bootstrap_samples > 0:
        # the mean's difference per resample: each model's mean over the classes defined there
        samples = with_mean(sampled_a, class_names) - with_mean(sampled_b, class_names)
        low, high = percentile_interval(samples, confidence, ~table["delta"].isna().to_numpy())
        table["ci_low"], table["ci_high"] = low, high
        table["p_bootstrap"] = _bootstrap_p(samples, table["delta"].to_numpy())
    tests = [
        delong_test(scores_a[known[:, j], j], scores_b[known[:, j], j], labels[known[:, j], j])
        for j in range(len(class_names))
    ]
    table["p_delong"] = [t.p_value for t in tests] + [np.nan]
    table["z_delong"] = [t.z for t in tests] + [np.nan]
    table["positives"] = [*labels.sum(axis=0).astype(int), np.nan]
    table["negatives"] = [*(known & ~labels).sum(axis=0).astype(int), np.nan]
    return table.loc[report_order(class_names, mean_row(class_names))]


def _bootstrap_p(samples: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Two-sided: twice the share of resampled differences on the far side of zero."""
    with np.errstate(invalid="ignore"):
        defined = np.sum(~np.isnan(samples), axis=0)
        below = np.sum(samples <= 0, axis=0) / np.maximum(defined, 1)
        above = np.sum(samples >= 0, axis=0) / np.maximum(defined, 1)
    p = np.minimum(1.0, 2 * np.minimum(below, above))
    return np.where((defined > 0) & ~np.isnan(point), p, np.nan)


def format_comparison(
    table: pd.DataFrame, label_a: str, label_b: str, images: int, patients: int, samples: int
) -> str:
    shown = pd.DataFrame(index=table.index)
    for column, pattern in (("auroc_a", "{:.4f}"), ("auroc_b", "{:.4f}"), ("delta", "{:+.4f}")):
        shown[column] = ["undefined" if pd.isna(v) else pattern.format(v) for v in table[column]]
    if "ci_low" in table:
        shown["95% CI"] = [
            "" if pd.isna(lo) else f"{lo:+.4f} to {hi:+.4f}"
            for lo, hi in zip(table["ci_low"], table["ci_high"], strict=True)
        ]
        # A resampled p cannot go below one resample in the number drawn.
        floor = 1 / max(samples, 1)
        shown["p (bootstrap)"] = [f"<{floor:g}" if v == 0 else _p(v) for v in table["p_bootstrap"]]
    shown["p (DeLong)"] = table["p_delong"].map(_p)
    shown.loc[[row for row in table.index if row.startswith("Mean (")], "p (DeLong)"] = "n/a"
    header = (
        f"Paired comparison on {images:,} images of {patients:,} patients: A = {label_a}, "
        f"B = {label_b}; delta = AUROC(A) - AUROC(B)"
    )
    return header + "\n" + shown.rename_axis(None).to_string()


def _p(value: float) -> str:
    if pd.isna(value):
        return "undefined"
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def write_comparison(
    a: pd.DataFrame,
    b: pd.DataFrame,
    truth: pd.DataFrame,
    class_names: Sequence[str],
    output_dir: Path,
    label_a: str,
    label_b: str,
    on: str = "same",
    bootstrap_samples: int = 1000,
    bootstrap_seed: int = 0,
    confidence: float = 0.95,
    plots: bool = True,
) -> pd.DataFrame:
    """``compare.csv`` and ``compare.png``; logs the table with the number of images compared."""
    a, b = align_predictions(a, b, on, (label_a, label_b))
    table = compare_predictions(
        a, b, truth, class_names, bootstrap_samples, bootstrap_seed, confidence
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(whole_numbers(table), output_dir / "compare.csv")
    patients = truth.loc[a[IMAGE], PATIENT].nunique()
    if plots:
        import matplotlib.pyplot as plt

        from chexnet_pl.evaluation.forest import forest_panel

        figure, ax = plt.subplots(figsize=(6.5, 0.32 * len(table) + 1.4))
        forest_panel(
            ax, [n.replace("_", " ") for n in table.index], table["delta"],
            table.get("ci_low"), table.get("ci_high"), reference=0.0,
            xlabel="AUROC(A) - AUROC(B)",
        )  # fmt: skip
        ax.set_title(
            f"A = {label_a}\nB = {label_b}\n{len(a):,} images, {confidence:.0%} CI (patient bootstrap)",
            fontsize=8,
        )
        save_figure(figure, output_dir / "compare.png")
    log.info("%s", format_comparison(table, label_a, label_b, len(a), patients, bootstrap_samples))
    return table
