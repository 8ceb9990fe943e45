"""Underdiagnosis (Seyyed-Kalantari et al., Nature Medicine 2021): per subgroup, the share of
images *with* a finding that the model calls "No Finding" — the false-positive rate of that
output — at a threshold chosen on validation (F1-maximising in the paper)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from chexnet_pl.evaluation.resampling import percentile_interval
from chexnet_pl.evaluation.subgroups.labels import TOO_SMALL, UNDEFINED, UNKNOWN


@dataclass(frozen=True)
class NoFindingThreshold:
    """The threshold underdiagnosis is measured at, and how it was chosen (for the report)."""

    value: float
    rule: str  # e.g. "F1-maximising on val"


def share(hits: np.ndarray, of: np.ndarray) -> float:
    """The share of ``of`` that is ``hits`` (NaN of none)."""
    total = int(of.sum())
    return float(hits.sum() / total) if total else float("nan")


def underdiagnosis_rows(
    groups, codes, resampled, has_finding, missed, patients, threshold, bootstrap_samples,
    confidence, spec,
) -> pd.DataFrame:  # fmt: skip
    """``underdiagnosis.csv``: per attribute and subgroup, the images with a finding, those called
    "No Finding" at ``threshold``, the rate with its bootstrap interval (``resampled``: per
    attribute, B × groups rates), and a note (too small, undefined, unknown)."""
    rows = []
    for attribute, (_, group_names) in groups.items():
        c = codes[attribute]
        low = high = None
        if bootstrap_samples > 0:
            low, high = percentile_interval(np.concatenate(resampled[attribute]), confidence)
        for g, group in enumerate(group_names):
            with_finding = (c == g) & has_finding
            rate = share(missed & with_finding, with_finding)
            row = {
                "attribute": attribute, "subgroup": group, "images": int((c == g).sum()),
                "images_with_finding": int(with_finding.sum()),
                "patients_with_finding": int(len(np.unique(patients[with_finding]))),
                "called_no_finding": int((missed & with_finding).sum()),
                "underdiagnosis_rate": rate, "no_finding_threshold": threshold.value,
                "threshold_rule": threshold.rule,
            }  # fmt: skip
            if low is not None:
                defined = not np.isnan(rate)
                row |= {"ci_low": float(low[g]) if defined else np.nan,
                        "ci_high": float(high[g]) if defined else np.nan}  # fmt: skip
            small = (c == g).sum() < spec.min_images or with_finding.sum() < spec.min_positives
            row["note"] = (
                UNKNOWN
                if group == UNKNOWN
                else UNDEFINED
                if np.isnan(rate)
                else TOO_SMALL
                if small
                else ""
            )
            rows.append(row)
    return pd.DataFrame(rows)
