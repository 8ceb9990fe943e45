"""Labels from the CheXpert labeller (CheXpert's tables, MIMIC-CXR-JPG's chexpert and negbio tables):
1 positive, 0 negative, -1 uncertain, blank not mentioned — and the uncertainty policies of the
CheXpert paper (Irvin et al., AAAI 2019) that turn them into training targets.

- ``ignore`` (U-Ignore): an uncertain label is NaN — masked in the loss, left out of metrics;
- ``zeros`` (U-Zeros): uncertain is negative; ``ones`` (U-Ones): uncertain is positive;
- a per-label mix: ``uncertain`` for every label except those in ``uncertain_by_label``
  (the paper found U-Ones best for Atelectasis and Edema, U-Zeros for Cardiomegaly).

A blank ("not mentioned") is negative, as in the paper's training, or NaN with
``not_mentioned=missing`` — except No Finding's: the labeller writes No Finding only as 1 or
blank, 1 when no pathology (any label but Support Devices) is positive or uncertain. By that
rule a blank No Finding is a negative when one of them is 1 or -1, so it is 0 then, not NaN
(on CheXpert's frontal train.csv: 169,869 of its 174,053 blank No Finding cells).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from chexnet_pl.errors import DataError, shown

POLICIES = ("ignore", "zeros", "ones")
NOT_MENTIONED = ("negative", "missing")
LABELLER_VALUES = (1.0, 0.0, -1.0)  # and blank
UNCERTAIN_TARGET = {"ignore": np.nan, "zeros": 0.0, "ones": 1.0}
NO_FINDING = "No Finding"
# What the labeller's No Finding ignores: a support device is not a finding.
NOT_A_FINDING = ("No Finding", "Support Devices")
# The 14 observations of the CheXpert labeller, in CheXpert's train.csv order.
CHEXPERT_LABELS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)


@dataclass(frozen=True)
class UncertaintyPolicy:
    """``data.uncertain``, ``data.uncertain_by_label`` and ``data.not_mentioned``, checked."""

    uncertain: str = "ignore"
    uncertain_by_label: Mapping[str, str] = field(default_factory=dict)
    not_mentioned: str = "negative"
    labels: Sequence[str] = CHEXPERT_LABELS

    def __post_init__(self) -> None:
        if self.uncertain not in POLICIES:
            raise DataError(f"data.uncertain={self.uncertain!r}; use one of {POLICIES}")
        for label, policy in (self.uncertain_by_label or {}).items():
            if label not in self.labels:
                raise DataError(
                    f"data.uncertain_by_label names {label!r}, not a label of this dataset; "
                    f"its labels are {list(self.labels)}"
                )
            if policy not in POLICIES:
                raise DataError(
                    f"data.uncertain_by_label.{label}={policy!r}; use one of {POLICIES}"
                )
        if self.not_mentioned not in NOT_MENTIONED:
            raise DataError(
                f"data.not_mentioned={self.not_mentioned!r}; use one of {NOT_MENTIONED}"
            )

    def policy(self, label: str) -> str:
        return (self.uncertain_by_label or {}).get(label, self.uncertain)

    def targets(
        self, raw: np.ndarray, names: Sequence[str], every_label: np.ndarray | None = None
    ) -> np.ndarray:
        """Labeller values (columns ``names``; NaN = blank) → float32 targets, NaN = unknown.
        ``every_label``: the same rows' values of all of ``labels`` (default: ``raw``, when
        ``names`` are all of them), which the No Finding rule reads."""
        result = np.array(raw, dtype=np.float32)
        blank = np.isnan(result)
        result[blank] = 0.0 if self.not_mentioned == "negative" else np.nan
        for j, name in enumerate(names):
            result[result[:, j] == -1.0, j] = UNCERTAIN_TARGET[self.policy(name)]
        if self.not_mentioned == "missing" and NO_FINDING in names:
            j = list(names).index(NO_FINDING)
            ruled_out = self.finding_mentioned(raw if every_label is None else every_label)
            result[blank[:, j] & ruled_out, j] = 0.0
        return result

    def finding_mentioned(self, every_label: np.ndarray) -> np.ndarray:
        """Per row: whether a pathology (any label but No Finding and Support Devices) is
        positive or uncertain — the labeller's reason to leave No Finding blank."""
        if every_label.shape[1] != len(self.labels):
            raise ValueError(f"the No Finding rule needs all {len(self.labels)} labeller columns")
        columns = [j for j, name in enumerate(self.labels) if name not in NOT_A_FINDING]
        return np.isin(every_label[:, columns], (1.0, -1.0)).any(axis=1)


def labeller_values(table: pd.DataFrame, columns: Sequence[str], source: str) -> np.ndarray:
    """The label columns as float (NaN where blank); any other value is an error naming the
    file, line (header = line 1), column and value."""
    values = np.empty((len(table), len(columns)), dtype=np.float32)
    for j, column in enumerate(columns):
        cells = table[column]
        if pd.api.types.is_numeric_dtype(cells):  # as pandas reads an intact table: fast path
            numbers, blank = cells, cells.isna()
        else:
            numbers = pd.to_numeric(cells, errors="coerce")
            blank = cells.isna() | (cells.astype(str).str.strip() == "")
        bad = (~blank & ~numbers.isin(LABELLER_VALUES)).to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{source}, line {i + 2}, column {column!r}: {shown(cells.iloc[i])} is not a label "
                f"value ({int(bad.sum())} such cell(s) in that column); the labeller writes 1.0 "
                "(positive), 0.0 (negative), -1.0 (uncertain) or leaves it blank (not mentioned)"
            )
        values[:, j] = np.where(blank.to_numpy(), np.nan, numbers.to_numpy(dtype=np.float64))
    return values


def ordered_labels(include_no_finding: bool, labels: Sequence[str] = CHEXPERT_LABELS) -> list[str]:
    """The labeller's findings in table order, then ``No Finding`` (when included) last, as the
    reports order them."""
    findings = [name for name in labels if name != "No Finding"]
    return [*findings, *(["No Finding"] if include_no_finding else [])]
