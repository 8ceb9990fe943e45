"""Performance by patient subgroup (sex, age band, view) and underdiagnosis.

Per finding and subgroup: AUROC with a patient-bootstrap CI, positives/negatives, TPR and FPR at
the operating threshold, and per attribute the gap (largest − smallest AUROC) with its CI. All
subgroups share each resample, so a gap's interval is that of a difference, not of two intervals.

What is compared is stated and kept comparable:
- a subgroup (or subgroup × finding cell) under the minimum size (``Subgroups.min_images``,
  ``min_positives``) is reported but marked ``too small``, and kept out of gaps; ``unknown``
  subgroups (missing age, sex or view) are kept out of gaps too;
- an attribute's mean AUROC is taken, in every subgroup, over the same findings: those usable in
  every compared subgroup of it (``findings_in_mean``, ``findings_left_out``), so a subgroup's
  mean does not rise because its hard findings have no positives there.

Underdiagnosis (Seyyed-Kalantari et al., Nature Medicine 2021): among images with a finding, the
share the model calls "No Finding" at that output's threshold — chosen on validation by
``Subgroups.underdiagnosis_threshold`` (F1-maximising, as the paper, by default).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from chexnet_pl.evaluation.auroc import with_mean
from chexnet_pl.evaluation.report import whole_numbers
from chexnet_pl.evaluation.resampling import GroupedAuroc, PatientResamples, percentile_interval
from chexnet_pl.evaluation.subgroups.labels import (  # noqa: F401  (the module's public names)
    ATTRIBUTES,
    TOO_SMALL,
    UNDEFINED,
    UNKNOWN,
    Subgroups,
    age_bands,
    subgroup_labels,
)
from chexnet_pl.evaluation.underdiagnosis import NoFindingThreshold, share, underdiagnosis_rows
from chexnet_pl.files import write_csv_atomic
from chexnet_pl.label_sets import NO_FINDING, finding_names, labelled

log = logging.getLogger(__name__)

GAP = "gap (max - min)"
MEAN = "Mean (findings usable in every subgroup)"


@dataclass
class SubgroupResult:
    table: pd.DataFrame  # subgroups.csv
    underdiagnosis: pd.DataFrame | None  # underdiagnosis.csv (None without a No Finding output)
    spec: Subgroups | None = None
    no_finding_threshold: NoFindingThreshold | None = None


def undefined_cells(table: pd.DataFrame) -> pd.DataFrame:
    """The subgroup × output cells (findings and No Finding; not means, not gaps) without an
    AUROC: the one count the warning and the summary both give."""
    cells = table[(table["subgroup"] != GAP) & (table["finding"] != MEAN)]
    return cells[cells["auroc"].isna()]


def score_subgroups(
    scores: np.ndarray,
    labels: np.ndarray,
    patients: np.ndarray,
    meta: pd.DataFrame,
    class_names: Sequence[str],
    thresholds: Sequence[float],
    spec: Subgroups,
    bootstrap_samples: int = 1000,
    bootstrap_seed: int = 0,
    confidence: float = 0.95,
    no_finding_threshold: NoFindingThreshold | None = None,
) -> SubgroupResult:
    """The subgroup table (and underdiagnosis per subgroup) for predictions row-aligned with
    ``meta`` (indexed by image name). ``no_finding_threshold``: the underdiagnosis threshold
    (default: the No Finding output's operating threshold in ``thresholds``)."""
    names = list(class_names)
    groups = subgroup_labels(meta, spec)
    positive, known = labels > 0.5, labelled(labels)  # a label not known: in no cell of its class
    negative = known & ~positive
    positive = positive & known
    thresholds = np.asarray(thresholds, dtype=np.float64)
    called = scores >= thresholds[None, :]
    no_finding = names.index(NO_FINDING) if NO_FINDING in names else None
    if no_finding is None:
        log.warning(
            "underdiagnosis needs the 'No Finding' output: this model has %d outputs (the 14 "
            "findings only); train with include_no_finding=true for it",
            len(names),
        )
    elif no_finding_threshold is None:
        no_finding_threshold = NoFindingThreshold(
            float(thresholds[no_finding]), "its operating threshold"
        )
    # One pass over all resamples: per attribute, AUROC (B × groups × classes) and, for
    # underdiagnosis, the weighted counts of images with a finding and of those called normal.
    resamples = PatientResamples.of(patients, bootstrap_samples, bootstrap_seed)
    codes = {a: _codes(lab, group_names) for a, (lab, group_names) in groups.items()}
    plans = {
        a: [
            GroupedAuroc(scores[:, j], positive[:, j], np.where(known[:, j], c, -1),
                         len(groups[a][1]), resamples.codes, resamples.num_patients)
            for j in range(scores.shape[1])
        ]
        for a, c in codes.items()
    }  # fmt: skip
    point = {a: np.stack([p.point() for p in plan], axis=-1) for a, plan in plans.items()}
    resampled: dict[str, list[np.ndarray]] = {a: [] for a in groups}
    under_resampled: dict[str, list[np.ndarray]] = {a: [] for a in groups}
    if no_finding is not None:
        has_finding = negative[:, no_finding]
        missed = has_finding & (scores[:, no_finding] >= no_finding_threshold.value)
        # per patient and subgroup: images with a finding, and those of them called normal
        with_finding = {
            a: _per_patient(c, has_finding, resamples, len(groups[a][1])) for a, c in codes.items()
        }
        called_normal = {
            a: _per_patient(c, missed, resamples, len(groups[a][1])) for a, c in codes.items()
        }
    for counts in resamples.blocks():
        for attribute, plan in plans.items():
            resampled[attribute].append(np.stack([p.resampled(counts) for p in plan], axis=-1))
            if no_finding is not None:
                under_resampled[attribute].append(
                    _ratio(
                        called_normal[attribute].T @ counts, with_finding[attribute].T @ counts
                    ).T
                )
    rows = []
    for attribute, (_, group_names) in groups.items():
        samples = np.concatenate(resampled[attribute]) if bootstrap_samples > 0 else None
        rows += _attribute_rows(
            attribute, group_names, codes[attribute], point[attribute], samples, positive,
            negative, called, patients, names, thresholds, confidence, spec,
        )  # fmt: skip
    table = pd.DataFrame(rows)
    undefined = undefined_cells(table)
    if len(undefined):
        log.warning(
            "AUROC undefined (no positives or no negatives) in %d of %d subgroup cells, e.g. %s; "
            "they are in subgroups.csv as undefined",
            len(undefined),
            int(((table["subgroup"] != GAP) & (table["finding"] != MEAN)).sum()),
            ", ".join(
                f"{r.finding} / {r.attribute} {r.subgroup}" for r in undefined.head(3).itertuples()
            ),
        )
    under = None
    if no_finding is not None:
        under = underdiagnosis_rows(
            groups, codes, under_resampled, has_finding, missed, patients, no_finding_threshold,
            bootstrap_samples, confidence, spec,
        )  # fmt: skip
    return SubgroupResult(table, under, spec, no_finding_threshold)


def _codes(labels: np.ndarray, group_names: list[str]) -> np.ndarray:
    lookup = {name: i for i, name in enumerate(group_names)}
    return np.array([lookup[v] for v in labels], dtype=np.int64)


def _per_patient(
    codes: np.ndarray, selected: np.ndarray, resamples: PatientResamples, count: int
) -> np.ndarray:
    """patients × groups: how many selected images each patient has in each group."""
    matrix = np.zeros((resamples.num_patients, count), dtype=np.float32)
    np.add.at(matrix, (resamples.codes[selected], codes[selected]), 1)
    return matrix


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _gap(values: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Largest − smallest over the usable groups (axis -2; ``usable``: groups × columns),
    ignoring NaN; NaN with fewer than two."""
    chosen = np.where(usable, values, np.nan)
    with np.errstate(invalid="ignore"):
        defined = np.sum(~np.isnan(chosen), axis=-2)
        filled_high = np.where(np.isnan(chosen), -np.inf, chosen).max(axis=-2)
        filled_low = np.where(np.isnan(chosen), np.inf, chosen).min(axis=-2)
    return np.where(defined >= 2, filled_high - filled_low, np.nan)


def _attribute_rows(
    attribute, group_names, codes, point, samples, positive, negative, called, patients, names,
    thresholds, confidence, spec,
) -> list[dict]:  # fmt: skip
    """Rows of one attribute: each subgroup × (finding..., mean, No Finding), then the gaps."""
    images = np.array([(codes == g).sum() for g in range(len(group_names))])
    pos = np.stack([positive[codes == g].sum(axis=0) for g in range(len(group_names))])
    neg = np.stack([negative[codes == g].sum(axis=0) for g in range(len(group_names))])
    compared = np.array([g != UNKNOWN for g in group_names]) & (images >= spec.min_images)
    large = (pos >= spec.min_positives) & (neg >= spec.min_positives)
    usable = compared[:, None] & large & ~np.isnan(point)  # groups × classes
    findings = finding_names(names)
    in_every = (
        [n for n in findings if usable[compared, names.index(n)].all()] if compared.any() else []
    )
    left_out = [n for n in findings if n not in in_every]
    with_mean_point = with_mean(point, names, in_every)  # groups × (classes, the mean)
    mean_point = with_mean_point[:, -1]
    usable_with_mean = np.concatenate([usable, compared[:, None]], axis=-1)
    order = [n for n in names if n != NO_FINDING] + [MEAN] + [n for n in names if n == NO_FINDING]
    low = high = samples_with_mean = None
    if samples is not None:
        samples_with_mean = with_mean(samples, names, in_every)
        low, high = percentile_interval(samples_with_mean, confidence, ~np.isnan(with_mean_point))
    rows = []
    for g, group in enumerate(group_names):
        in_group = codes == g
        for name in order:
            j = names.index(name) if name != MEAN else len(names)
            row = {"attribute": attribute, "subgroup": group, "finding": name, "images": int(images[g]),
                   "patients": int(len(np.unique(patients[in_group])))}  # fmt: skip
            if name == MEAN:
                row |= {"auroc": float(mean_point[g]), "findings_in_mean": len(in_every),
                        "findings_left_out": ", ".join(left_out)}  # fmt: skip
            else:
                predicted = called[in_group, j]
                row |= {
                    "positives": int(pos[g, j]), "negatives": int(neg[g, j]), "auroc": float(point[g, j]),
                    "threshold": float(thresholds[j]),
                    "tpr": share(predicted & positive[in_group, j], positive[in_group, j]),
                    "fpr": share(predicted & negative[in_group, j], negative[in_group, j]),
                }  # fmt: skip
            if low is not None:
                row |= {"ci_low": float(low[g, j]), "ci_high": float(high[g, j])}
            row["note"] = _note(
                group, bool(compared[g]), row["auroc"], bool(usable_with_mean[g, j])
            )
            rows.append(row)
    if compared.sum() < 2:
        return rows
    gap_point = _gap(with_mean_point, usable_with_mean)
    gap_low = gap_high = None
    if samples_with_mean is not None:
        gaps = _gap(samples_with_mean, usable_with_mean)
        gap_low, gap_high = percentile_interval(gaps, confidence, ~np.isnan(gap_point))
    cells = pd.DataFrame(rows)
    for name in order:
        j = names.index(name) if name != MEAN else len(names)
        row = {"attribute": attribute, "subgroup": GAP, "finding": name, "auroc": float(gap_point[j]),
               "subgroups_compared": int(usable_with_mean[:, j].sum())}  # fmt: skip
        if name == MEAN:
            row |= {"findings_in_mean": len(in_every), "findings_left_out": ", ".join(left_out)}
        else:
            shown = cells[(cells["finding"] == name) & (cells["note"] == "")]
            row |= {"tpr": _spread(shown["tpr"]), "fpr": _spread(shown["fpr"])}
        if gap_low is not None:
            row |= {"ci_low": float(gap_low[j]), "ci_high": float(gap_high[j])}
        rows.append(row)
    return rows


def _note(group: str, group_compared: bool, auroc: float, usable: bool) -> str:
    """Why a cell is left out of gaps and means ("" when it is not): an unknown subgroup, one
    under the minimum size, no AUROC (no positives or negatives), or too few of them."""
    if group == UNKNOWN:
        return UNKNOWN
    if not group_compared:
        return TOO_SMALL
    if np.isnan(auroc):
        return UNDEFINED
    return "" if usable else TOO_SMALL


def _images_of(table: pd.DataFrame) -> int:
    """The images a subgroup table covers: its first attribute's subgroups' sizes (they partition
    the images, an unknown subgroup included) for its first output."""
    rows = table[(table["subgroup"] != GAP) & table["images"].notna()]
    if rows.empty:
        return 0
    first = rows[(rows["attribute"] == rows["attribute"].iloc[0])
                 & (rows["finding"] == rows["finding"].iloc[0])]  # fmt: skip
    return int(first["images"].sum())


def _spread(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.max() - values.min()) if len(values) >= 2 else float("nan")


def has_subgroup_columns(spec: Subgroups, meta: pd.DataFrame) -> bool:
    """Whether a subgroup report can be made: some attribute is set and the metadata next to the
    predictions has its column (warned about when it has none of them)."""
    if not spec.attributes:
        return False
    if not any(ATTRIBUTES[a] in meta.columns for a in spec.attributes):
        log.warning(
            "no subgroup columns (%s) next to the predictions: no subgroup report",
            [ATTRIBUTES[a] for a in spec.attributes],
        )
        return False
    return True


def write_subgroup_report(
    result: SubgroupResult,
    output_dir: Path,
    overall: dict[str, float] | None = None,
    plots: bool = True,
    scope: str = "test split",
    confidence: float = 0.95,
    model: str = "",
    figure_format: str = "png",
    images: int | None = None,
) -> SubgroupResult:
    """``score_subgroups``' result as ``subgroups.csv``, ``underdiagnosis.csv`` (15-output
    models) and ``subgroups_forest.<figure_format>`` (its title naming ``scope`` and ``model``)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(whole_numbers(result.table), output_dir / "subgroups.csv", index=False)
    if result.underdiagnosis is not None:
        write_csv_atomic(
            whole_numbers(result.underdiagnosis), output_dir / "underdiagnosis.csv", index=False
        )
    if plots:
        from chexnet_pl.evaluation.forest import plot_subgroup_forest
        from chexnet_pl.evaluation.plots import figure_title
        from chexnet_pl.files import figure_path

        plot_subgroup_forest(
            result.table, figure_path(output_dir, "subgroups_forest", figure_format), overall,
            title=figure_title("AUROC by subgroup", scope, images or _images_of(result.table), model)
            + f"\n{confidence:.0%} CI (patient bootstrap); dotted: all images; grey: too small "
            f"({result.spec.size_rule}) or unknown, left out of gaps",
        )  # fmt: skip
    return result
