"""The few lines the printed report gives about subgroups: each attribute's mean AUROC per
subgroup (saying over which findings), its gap, the largest per-finding gaps, the count of
undefined cells, and underdiagnosis per subgroup (saying at which threshold, chosen how)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from chexnet_pl.evaluation.subgroups import (
    GAP,
    MEAN,
    TOO_SMALL,
    UNKNOWN,
    SubgroupResult,
    undefined_cells,
)
from chexnet_pl.label_sets import NO_FINDING

GROUP_WORDS = {"sex": "both sexes", "age": "every age band", "view": "both views"}


def _interval(row) -> str:
    if pd.isna(row.get("auroc")):
        return "undefined"
    text = f"{row['auroc']:.3f}"
    if "ci_low" in row and pd.notna(row.get("ci_low")):
        text += f" ({row['ci_low']:.3f}-{row['ci_high']:.3f})"
    return text


def _mark(row) -> str:
    note = row.get("note") or ""
    return f" [{note}]" if note in (TOO_SMALL, UNKNOWN) else ""


def format_summary(result: SubgroupResult, largest: int = 3) -> str:
    """The summary lines of the printed report."""
    table = result.table
    spec = result.spec
    rule = (
        f"; subgroups and cells need {spec.size_rule}, else they are marked and left out"
        if spec
        else ""
    )
    lines = [f"Subgroups: mean AUROC (95% CI), n images; gap = largest - smallest{rule}"]
    for attribute, block in table[table["finding"] == MEAN].groupby("attribute", sort=False):
        first = block.iloc[0]
        count = int(first.get("findings_in_mean", 0) or 0)
        left_out = first.get("findings_left_out")
        left_out = [] if pd.isna(left_out) or not left_out else str(left_out).split(", ")
        if len(left_out) > 6:
            left_out = f" ({len(left_out)} left out: too few positives in some subgroup)"
        else:
            left_out = f" (left out: {', '.join(left_out)})" if left_out else ""
        cells = [
            f"{r['subgroup']} {_interval(r)} n={int(r['images'])}{_mark(r)}"
            if r["subgroup"] != GAP
            else f"gap {_interval(r)}"
            for _, r in block.iterrows()
        ]
        where = GROUP_WORDS.get(str(attribute), "every subgroup")
        groups = block[block["subgroup"] != GAP]
        if count == 0 and groups["note"].isin([TOO_SMALL, UNKNOWN]).all():
            lines.append(f"  {attribute:<5} no subgroup is large enough to compare:")
        else:
            lines.append(
                f"  {attribute:<5} mean over the {count} findings usable in {where}{left_out}:"
            )
        lines.append("        " + " | ".join(cells))
    gaps = table[(table["subgroup"] == GAP) & ~table["finding"].isin([MEAN, NO_FINDING])]
    gaps = gaps.dropna(subset=["auroc"])
    if len(gaps):
        top = gaps.sort_values("auroc", ascending=False).head(largest)
        cells = [f"{r['finding']} by {r['attribute']} {_interval(r)}" for _, r in top.iterrows()]
        lines.append("  largest gaps: " + "; ".join(cells))
    undefined = undefined_cells(table)
    if len(undefined):
        lines.append(
            f"  undefined AUROC (no positives or negatives): {len(undefined)} subgroup cell(s), "
            "see subgroups.csv"
        )
    if result.underdiagnosis is not None and len(result.underdiagnosis):
        under = result.underdiagnosis
        chosen = result.no_finding_threshold
        how = f": {chosen.rule}" if chosen else ""
        lines.append(
            "Underdiagnosis: images with a finding called 'No Finding' (its threshold "
            f"{under['no_finding_threshold'].iloc[0]:.3f}{how})"
        )
        for attribute, block in under.groupby("attribute", sort=False):
            cells = []
            for _, r in block.iterrows():
                rate = r["underdiagnosis_rate"]
                text = "undefined" if pd.isna(rate) else f"{rate:.1%}"
                if pd.notna(r.get("ci_low", np.nan)):
                    text += f" ({r['ci_low']:.1%}-{r['ci_high']:.1%})"
                cells.append(f"{r['subgroup']} {text}{_mark(r)}")
            lines.append(f"  {attribute:<5} " + " | ".join(cells))
    return "\n".join(lines)
