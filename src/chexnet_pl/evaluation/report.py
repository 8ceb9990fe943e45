"""Score predictions against ground truth: per-class AUROC with patient-bootstrap CIs, a dataset's
published reference values beside them (the CheXNet paper's on NIH), and operating points chosen
on validation. Labels may be NaN (not known for an image): each class uses its labelled images."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_curve, roc_curve

from chexnet_pl.errors import ConfigError
from chexnet_pl.evaluation.auroc import with_mean
from chexnet_pl.evaluation.resampling import PatientResamples, class_aurocs, percentile_interval
from chexnet_pl.label_sets import NO_FINDING, labelled, mean_row, report_order

log = logging.getLogger(__name__)

THRESHOLD_METHODS = ("youden", "f1")
# aucs.csv's columns saying how each class's threshold was chosen (evaluation.thresholds).
THRESHOLD_COLUMNS = ("threshold_rule", "threshold_split", "threshold_positives", "threshold_status")


def choose_threshold(scores: np.ndarray, labels: np.ndarray, method: str = "youden") -> float:
    """Youden's J (max sensitivity + specificity − 1) or the F1-optimal threshold on the labelled
    images; NaN if undefined."""
    known = labelled(labels)
    scores, positive = np.asarray(scores)[known], np.asarray(labels)[known] > 0.5
    if positive.all() or not positive.any():
        return float("nan")
    if method == "youden":
        fpr, tpr, thresholds = roc_curve(positive, scores)
        best = int(np.argmax(tpr - fpr))
        return float(min(thresholds[best], 1.0))
    if method == "f1":
        precision, recall, thresholds = precision_recall_curve(positive, scores)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.nan_to_num(2 * precision * recall / (precision + recall))[:-1]
        return float(thresholds[int(np.argmax(f1))])
    raise ConfigError(f"unknown evaluation.threshold {method!r}; use one of {THRESHOLD_METHODS}")


def threshold_status(
    scores: np.ndarray, labels: np.ndarray, threshold: float, split: str = "val"
) -> str:
    """Whether a threshold chosen on ``split`` (its ``scores``, ``labels``) gives a verdict:
    ``ok``; ``undefined: no positives on val`` (or negatives); ``degenerate: sensitivity 0 on
    val`` (no positive reaches it, e.g. 1.000) or specificity 0 (every negative reaches it)."""
    known = labelled(labels)
    positive = np.asarray(labels)[known] > 0.5
    if np.isnan(threshold):
        if not positive.any():
            return f"undefined: no positives on {split}"
        if positive.all():
            return f"undefined: no negatives on {split}"
        return f"undefined on {split}"
    point = operating_point(scores, labels, threshold)
    if point["sensitivity"] == 0:
        return f"degenerate: sensitivity 0 on {split} (no positive reaches {threshold:.3f})"
    if point["specificity"] == 0:
        return f"degenerate: specificity 0 on {split} (every negative reaches {threshold:.3f})"
    return "ok"


def operating_point(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, PPV and F1 of ``score >= threshold`` on the labelled images."""
    if np.isnan(threshold):
        return dict.fromkeys(("sensitivity", "specificity", "ppv", "f1"), float("nan"))
    known = labelled(labels)
    predicted, positive = np.asarray(scores)[known] >= threshold, np.asarray(labels)[known] > 0.5
    tp = float(np.sum(predicted & positive))
    fp = float(np.sum(predicted & ~positive))
    fn = float(np.sum(~predicted & positive))
    tn = float(np.sum(~predicted & ~positive))

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else float("nan")

    return {
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
    }


def score_predictions(
    scores: np.ndarray,
    labels: np.ndarray,
    patients: np.ndarray,
    class_names: Sequence[str],
    bootstrap_samples: int = 1000,
    bootstrap_seed: int = 0,
    confidence: float = 0.95,
    thresholds: Sequence[float] | None = None,
    reference: tuple[Mapping[str, float], float] | None = None,
) -> pd.DataFrame:
    """The per-class table (``aucs.csv``): AUROC, CI, counts (of labelled images), the
    reference's value and the difference (``reference``: per-class values and their mean, e.g.
    the CheXNet paper's; None: no such columns), and — when thresholds are given — the operating
    point at each class's threshold. The mean row is over the findings (``No Finding`` apart)."""
    mean_name = mean_row(class_names)
    resamples = PatientResamples.of(patients, bootstrap_samples, bootstrap_seed)
    auroc, samples = class_aurocs(scores, labels, resamples)
    point = with_mean(auroc, class_names)
    table = pd.DataFrame(
        {
            "auroc": auroc,
            "positives": (labels > 0.5).sum(axis=0).astype(int),
            "negatives": (labels < 0.5).sum(axis=0).astype(int),  # NaN (not labelled) is neither
        },
        index=list(class_names),
    )
    table.loc[mean_name, ["auroc", "positives", "negatives"]] = [point[-1], np.nan, np.nan]
    if bootstrap_samples > 0:
        table["ci_low"], table["ci_high"] = percentile_interval(
            with_mean(samples, class_names), confidence, ~np.isnan(point)
        )
    if reference is not None:
        values, reference_mean = reference
        table["paper_auroc"] = [values.get(name, np.nan) for name in class_names] + [reference_mean]
        table["diff_vs_paper"] = table["auroc"] - table["paper_auroc"]
    if thresholds is not None:
        points = [
            {"threshold": t, **operating_point(scores[:, j], labels[:, j], t)}
            for j, t in enumerate(thresholds)
        ]
        for column in ("threshold", "sensitivity", "specificity", "ppv", "f1"):
            table[column] = [p[column] for p in points] + [np.nan]
    table.index.name = "class"
    # No Finding is reported on its own line, after the mean it is not part of.
    order = report_order(class_names, mean_name)
    undefined = [n for n in class_names if np.isnan(table.at[n, "auroc"])]
    if undefined:
        log.warning(
            "AUROC undefined (no positives or no negatives in this split) for: %s", undefined
        )
    return table.loc[order]


def format_report(table: pd.DataFrame) -> str:
    """Readable text: undefined values say so instead of NaN; no paper columns when they were
    blanked (images that are not the paper's test set)."""
    # How thresholds were chosen is said in the report's header; the warnings name the flagged.
    shown = table.drop(columns=list(THRESHOLD_COLUMNS), errors="ignore")
    if "paper_auroc" in shown and shown["paper_auroc"].isna().all():
        shown = shown.drop(columns=["paper_auroc", "diff_vs_paper"])
    for column in ("positives", "negatives"):
        shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{int(v)}")
    if "ci_low" in shown:
        shown.insert(
            1,
            "95% CI",
            [
                "" if pd.isna(lo) else f"{lo:.4f}-{hi:.4f}"
                for lo, hi in zip(shown.pop("ci_low"), shown.pop("ci_high"), strict=True)
            ],
        )
    # Cells that do not apply are blank; "undefined" is kept for scores that could not be computed.
    means = [row for row in shown.index if str(row).startswith("Mean (")]
    not_applicable = {
        **{row: ["threshold", "sensitivity", "specificity", "ppv", "f1"] for row in means},
        NO_FINDING: ["paper_auroc", "diff_vs_paper"],
    }
    shown = shown.astype(object)
    shown.index.name = None  # else to_string prints a stray "class" row under the header
    for row, columns in not_applicable.items():
        for column in columns:
            if row in shown.index and column in shown.columns:
                shown.at[row, column] = ""
    return shown.to_string(
        na_rep="undefined",
        formatters={
            c: _cell for c in shown.columns if c not in ("positives", "negatives", "95% CI")
        },
    )


def _cell(value) -> str:
    if isinstance(value, str):
        return value
    return "undefined" if pd.isna(value) else f"{value:.4f}"


def whole_numbers(table: pd.DataFrame) -> pd.DataFrame:
    """Count columns as integers in the CSV (``2423``, not ``2423.0``), blank where they do not
    apply (gap rows, means)."""
    table = table.copy()
    for column in ("images", "patients", "positives", "negatives", "threshold_positives", "images_with_finding",
                   "patients_with_finding", "called_no_finding", "findings_in_mean",
                   "subgroups_compared"):  # fmt: skip
        if column in table:
            table[column] = table[column].astype("Int64")
    return table
