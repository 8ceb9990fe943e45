"""Per-class AUROC tables from logged metrics, as a DataFrame, CSV and readable text."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd

from chexnet_pl.label_sets import mean_row


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
