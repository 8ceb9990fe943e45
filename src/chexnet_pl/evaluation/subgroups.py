"""Performance by patient subgroup (sex, age band, view) and underdiagnosis.

Per finding and subgroup: AUROC with a patient-bootstrap CI, positives/negatives, TPR and FPR at
the operating threshold, and per attribute the gap (largest − smallest AUROC) with its CI. All
subgroups share each resample, so a gap's interval is that of a difference, not of two intervals.
Underdiagnosis (Seyyed-Kalantari et al., Nature Medicine 2021): among images with a finding, the
share the model calls "No Finding" at its threshold — the false-positive rate of that output.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from chexnet_pl.evaluation.auroc import mean_over
from chexnet_pl.evaluation.resampling import GroupedAuroc, PatientResamples, percentile_interval
from chexnet_pl.labels import FINDINGS, NO_FINDING
from chexnet_pl.validation import Problems

log = logging.getLogger(__name__)

SEX = "Patient Gender"
AGE = "Patient Age"
VIEW = "View Position"
METADATA_COLUMNS = (SEX, AGE, VIEW, "Follow-up #")
ATTRIBUTES = {"sex": SEX, "age": AGE, "view": VIEW}
UNKNOWN = "unknown"
GAP = "gap (max - min)"
MEAN = "Mean (14 findings)"


@dataclass(frozen=True)
class Subgroups:
    """Which attributes, and how ages are banded: ``age_edges=(20, 40, 60, 80)`` gives 0-20,
    20-40, 40-60, 60-80, 80+ (lower edge included); ages above ``max_age`` go to ``unknown``.
    ``evaluation.subgroups``, ``evaluation.age_bands`` and ``evaluation.max_age``."""

    attributes: tuple[str, ...]
    age_edges: tuple[int, ...]
    max_age: int

    def __post_init__(self) -> None:
        problems = Problems("evaluation")
        if isinstance(self.attributes, str) or not isinstance(self.attributes, Sequence):
            problems.add(
                f"evaluation.subgroups={self.attributes!r}: give a list, some of "
                f"{list(ATTRIBUTES)} (or [] for none)"
            )
        else:
            for attribute in self.attributes:
                problems.choice("subgroups[]", attribute, ATTRIBUTES)
        edges = self.age_edges
        numbers = (
            not isinstance(edges, str)
            and isinstance(edges, Sequence)
            and all(isinstance(e, int | float) and not isinstance(e, bool) for e in edges)
        )
        edges_ok = numbers and list(edges) == sorted(set(edges)) and not (edges and edges[0] <= 0)
        if not edges_ok:
            problems.add(
                f"evaluation.age_bands={edges!r}: give increasing positive ages, e.g. "
                "[20, 40, 60, 80]"
            )
        if problems.number("max_age", self.max_age, minimum=1) and edges_ok and edges:
            if self.max_age <= max(edges):
                problems.add(
                    f"evaluation.max_age={self.max_age} is not above the last age band edge "
                    f"({max(edges)}); raise it or drop that edge"
                )
        problems.raise_if_any()


def _parse_age(value) -> float:
    """NIH ages are numbers; its older sample files write ``058Y`` (years) — both are read."""
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*[Yy]?\s*", str(value))
    return float(match.group(1)) if match else float("nan")


def age_bands(ages: pd.Series, images: pd.Series, spec: Subgroups) -> tuple[np.ndarray, list[str]]:
    """Band label per image and the band names in order; implausible or missing ages are named
    in a warning and go to ``unknown``."""
    edges = [0, *spec.age_edges]
    names = [f"{lo}-{hi}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    names.append(f"{edges[-1]}+")
    values = np.array([_parse_age(v) for v in ages], dtype=np.float64)
    bad = np.isnan(values) | (values < 0) | (values > spec.max_age)
    if bad.any():
        examples = ", ".join(
            f"{name} ({age})"
            for name, age in zip(images[bad].head(5), ages[bad].head(5), strict=True)
        )
        log.warning(
            "%d image(s) have a missing or implausible age (over %d or below 0), e.g. %s: they go "
            "to the '%s' age band (the 2017 CSV has such ages; v2020 corrected them)",
            int(bad.sum()), spec.max_age, examples, UNKNOWN,
        )  # fmt: skip
    index = np.searchsorted(np.asarray(spec.age_edges, dtype=np.float64), values, side="right")
    labels = np.asarray(names, dtype=object)[np.minimum(index, len(names) - 1)]
    labels[bad] = UNKNOWN
    return labels, names


def _categorical(values: pd.Series, expected: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    labels = values.fillna("").astype(str).str.strip().str.upper().to_numpy(dtype=object)
    labels[labels == ""] = UNKNOWN
    others = sorted(set(labels) - set(expected) - {UNKNOWN})
    return labels, [*expected, *others]


def subgroup_labels(meta: pd.DataFrame, spec: Subgroups) -> dict[str, tuple[np.ndarray, list[str]]]:
    """attribute → (label per image, the subgroups in report order; ``unknown`` last if present)."""
    result = {}
    for attribute in spec.attributes:
        column = ATTRIBUTES[attribute]
        if column not in meta.columns:
            log.warning("no '%s' column in the metadata: no %s subgroups", column, attribute)
            continue
        if attribute == "age":
            labels, names = age_bands(meta[column], meta.index.to_series(), spec)
        elif attribute == "sex":
            labels, names = _categorical(meta[column], ["F", "M"])
        else:
            labels, names = _categorical(meta[column], ["PA", "AP"])
        if (labels == UNKNOWN).any():
            names.append(UNKNOWN)
        result[attribute] = (labels, names)
    return result


@dataclass
class SubgroupResult:
    table: pd.DataFrame  # subgroups.csv
    underdiagnosis: pd.DataFrame | None  # underdiagnosis.csv (None without a No Finding output)


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
) -> SubgroupResult:
    """The subgroup table (and underdiagnosis per subgroup) for predictions row-aligned with
    ``meta`` (indexed by image name)."""
    names = list(class_names)
    groups = subgroup_labels(meta, spec)
    positive = labels > 0.5
    thresholds = np.asarray(thresholds, dtype=np.float64)
    called = scores >= thresholds[None, :]
    no_finding = names.index(NO_FINDING) if NO_FINDING in names else None
    if no_finding is None:
        log.warning(
            "underdiagnosis needs the 'No Finding' output: this model has %d outputs (the 14 "
            "findings only); train with include_no_finding=true for it",
            len(names),
        )
    # One pass over all resamples: per attribute, AUROC (B × groups × classes) and, for
    # underdiagnosis, the weighted counts of images with a finding and of those called normal.
    resamples = PatientResamples.of(patients, bootstrap_samples, bootstrap_seed)
    codes = {a: _codes(lab, group_names) for a, (lab, group_names) in groups.items()}
    plans = {
        a: [
            GroupedAuroc(scores[:, j], positive[:, j], c, len(groups[a][1]), resamples.codes,
                         resamples.num_patients)
            for j in range(scores.shape[1])
        ]
        for a, c in codes.items()
    }  # fmt: skip
    point = {a: np.stack([p.point() for p in plan], axis=-1)[None] for a, plan in plans.items()}
    resampled: dict[str, list[np.ndarray]] = {a: [] for a in groups}
    under_resampled: dict[str, list[np.ndarray]] = {a: [] for a in groups}
    if no_finding is not None:
        has_finding = ~positive[:, no_finding]
        missed = has_finding & called[:, no_finding]
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
        c = codes[attribute]
        samples = np.concatenate(resampled[attribute]) if bootstrap_samples > 0 else None
        rows += _attribute_rows(
            attribute, group_names, c, point[attribute], samples, scores, positive, called,
            patients, names, thresholds, confidence,
        )  # fmt: skip
    table = pd.DataFrame(rows)
    undefined = table[(table["subgroup"] != GAP) & table["auroc"].isna()]
    if len(undefined):
        log.warning(
            "AUROC undefined (no positives or no negatives) in %d of %d subgroup cells, e.g. %s; "
            "they are in subgroups.csv as undefined",
            len(undefined),
            int((table["subgroup"] != GAP).sum()),
            ", ".join(
                f"{r.finding} / {r.attribute} {r.subgroup}" for r in undefined.head(3).itertuples()
            ),
        )
    under = None
    if no_finding is not None:
        under = _underdiagnosis(
            groups, codes, under_resampled, has_finding, missed, patients,
            float(thresholds[no_finding]), bootstrap_samples, confidence,
        )  # fmt: skip
    return SubgroupResult(table, under)


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
    """Largest − smallest over the usable groups (axis -2), ignoring NaN; NaN with fewer than two."""
    chosen = values[..., usable, :]
    with np.errstate(invalid="ignore"):
        defined = np.sum(~np.isnan(chosen), axis=-2)
        filled_high = np.where(np.isnan(chosen), -np.inf, chosen).max(axis=-2)
        filled_low = np.where(np.isnan(chosen), np.inf, chosen).min(axis=-2)
    return np.where(defined >= 2, filled_high - filled_low, np.nan)


def _attribute_rows(
    attribute, group_names, codes, point, samples, scores, positive, called, patients, names,
    thresholds, confidence,
) -> list[dict]:  # fmt: skip
    """Rows of one attribute: each subgroup × (finding..., mean, No Finding), then the gaps."""
    mean_point = mean_over(point[0], names, FINDINGS)  # groups
    order = [n for n in names if n != NO_FINDING] + [MEAN] + [n for n in names if n == NO_FINDING]
    low = high = None
    if samples is not None:
        with_mean = np.concatenate([samples, mean_over(samples, names, FINDINGS)[..., None]], -1)
        defined = ~np.isnan(np.concatenate([point[0], mean_point[:, None]], axis=-1))
        low, high = percentile_interval(with_mean, confidence, defined)
    rows = []
    for g, group in enumerate(group_names):
        in_group = codes == g
        for name in order:
            j = names.index(name) if name != MEAN else len(names)
            row = {"attribute": attribute, "subgroup": group, "finding": name,
                   "images": int(in_group.sum()), "patients": int(len(np.unique(patients[in_group])))}  # fmt: skip
            if name == MEAN:
                row |= {"auroc": float(mean_point[g])}
            else:
                pos, neg = positive[in_group, j], ~positive[in_group, j]
                predicted = called[in_group, j]
                row |= {
                    "positives": int(pos.sum()),
                    "negatives": int(neg.sum()),
                    "auroc": float(point[0, g, j]),
                    "threshold": float(thresholds[j]),
                    "tpr": _share(predicted & pos, pos),
                    "fpr": _share(predicted & neg, neg),
                }
            if low is not None:
                row |= {"ci_low": float(low[g, j]), "ci_high": float(high[g, j])}
            rows.append(row)
    usable = np.array([g != UNKNOWN for g in group_names])
    if usable.sum() >= 2:
        gap_point = _gap(np.concatenate([point[0], mean_point[:, None]], axis=-1), usable)
        gap_low = gap_high = None
        if samples is not None:
            gaps = _gap(with_mean, usable)
            gap_low, gap_high = percentile_interval(gaps, confidence, ~np.isnan(gap_point))
        tpr_fpr = pd.DataFrame([r for r in rows if r["subgroup"] != UNKNOWN])
        for name in order:
            j = names.index(name) if name != MEAN else len(names)
            row = {
                "attribute": attribute,
                "subgroup": GAP,
                "finding": name,
                "auroc": float(gap_point[j]),
            }
            if name != MEAN:
                cells = tpr_fpr[tpr_fpr["finding"] == name]
                row |= {"tpr": _spread(cells["tpr"]), "fpr": _spread(cells["fpr"])}
            if gap_low is not None:
                row |= {"ci_low": float(gap_low[j]), "ci_high": float(gap_high[j])}
            rows.append(row)
    return rows


def _share(hits: np.ndarray, of: np.ndarray) -> float:
    total = int(of.sum())
    return float(hits.sum() / total) if total else float("nan")


def _spread(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.max() - values.min()) if len(values) >= 2 else float("nan")


def _underdiagnosis(
    groups, codes, resampled, has_finding, missed, patients, threshold, bootstrap_samples, confidence
) -> pd.DataFrame:  # fmt: skip
    rows = []
    for attribute, (_, group_names) in groups.items():
        c = codes[attribute]
        low = high = None
        if bootstrap_samples > 0:
            samples = np.concatenate(resampled[attribute])
            low, high = percentile_interval(samples, confidence)
        for g, group in enumerate(group_names):
            with_finding = (c == g) & has_finding
            rate = _share(missed & with_finding, with_finding)
            row = {
                "attribute": attribute, "subgroup": group,
                "images_with_finding": int(with_finding.sum()),
                "patients_with_finding": int(len(np.unique(patients[with_finding]))),
                "called_no_finding": int((missed & with_finding).sum()),
                "underdiagnosis_rate": rate, "no_finding_threshold": threshold,
            }  # fmt: skip
            if low is not None:
                defined = not np.isnan(rate)
                row |= {
                    "ci_low": float(low[g]) if defined else np.nan,
                    "ci_high": float(high[g]) if defined else np.nan,
                }
            rows.append(row)
    return pd.DataFrame(rows)


def _interval(row) -> str:
    if pd.isna(row.get("auroc")):
        return "undefined"
    text = f"{row['auroc']:.3f}"
    if "ci_low" in row and pd.notna(row.get("ci_low")):
        text += f" ({row['ci_low']:.3f}-{row['ci_high']:.3f})"
    return text


def format_summary(result: SubgroupResult, largest: int = 3) -> str:
    """A few lines for the printed report: the mean AUROC per subgroup with the gap, the largest
    per-finding gaps, and underdiagnosis per subgroup."""
    table = result.table
    lines = [
        "Subgroups: mean AUROC over the 14 findings (95% CI), n images; gap = largest - smallest"
    ]
    for attribute, block in table[table["finding"] == MEAN].groupby("attribute", sort=False):
        cells = [
            f"{r['subgroup']} {_interval(r)} n={int(r['images'])}"
            if r["subgroup"] != GAP
            else f"gap {_interval(r)}"
            for _, r in block.iterrows()
        ]
        lines.append(f"  {attribute:<5} " + " | ".join(cells))
    gaps = table[(table["subgroup"] == GAP) & table["finding"].isin(FINDINGS)].dropna(
        subset=["auroc"]
    )
    if len(gaps):
        top = gaps.sort_values("auroc", ascending=False).head(largest)
        cells = [f"{r['finding']} by {r['attribute']} {_interval(r)}" for _, r in top.iterrows()]
        lines.append("  largest gaps: " + "; ".join(cells))
    undefined = table[
        (table["subgroup"] != GAP) & (table["finding"] != MEAN) & table["auroc"].isna()
    ]
    if len(undefined):
        lines.append(
            f"  undefined AUROC (no positives or negatives): {len(undefined)} cell(s), see subgroups.csv"
        )
    if result.underdiagnosis is not None and len(result.underdiagnosis):
        under = result.underdiagnosis
        threshold = under["no_finding_threshold"].iloc[0]
        lines.append(
            f"Underdiagnosis: images with a finding called 'No Finding' (threshold {threshold:.3f})"
        )
        for attribute, block in under.groupby("attribute", sort=False):
            cells = []
            for _, r in block.iterrows():
                rate = r["underdiagnosis_rate"]
                text = "undefined" if pd.isna(rate) else f"{rate:.1%}"
                if pd.notna(r.get("ci_low", np.nan)):
                    text += f" ({r['ci_low']:.1%}-{r['ci_high']:.1%})"
                cells.append(f"{r['subgroup']} {text}")
            lines.append(f"  {attribute:<5} " + " | ".join(cells))
    return "\n".join(lines)


def write_subgroup_report(
    scores: np.ndarray,
    labels: np.ndarray,
    patients: np.ndarray,
    meta: pd.DataFrame,
    class_names: Sequence[str],
    thresholds: Sequence[float],
    spec: Subgroups,
    output_dir: Path,
    bootstrap_samples: int = 1000,
    bootstrap_seed: int = 0,
    confidence: float = 0.95,
    overall: dict[str, float] | None = None,
    plots: bool = True,
    split: str = "test",
) -> SubgroupResult | None:
    """``subgroups.csv``, ``underdiagnosis.csv`` (15-output models) and ``subgroups_forest.png``;
    None when no subgroup attribute is set or the metadata has none of their columns."""
    if not spec.attributes:
        return None
    if not any(ATTRIBUTES[a] in meta.columns for a in spec.attributes):
        log.warning(
            "no subgroup columns (%s) next to the predictions: no subgroup report",
            [ATTRIBUTES[a] for a in spec.attributes],
        )
        return None
    result = score_subgroups(
        scores, labels, patients, meta, class_names, thresholds, spec, bootstrap_samples,
        bootstrap_seed, confidence,
    )  # fmt: skip
    output_dir.mkdir(parents=True, exist_ok=True)
    result.table.to_csv(output_dir / "subgroups.csv", index=False)
    if result.underdiagnosis is not None:
        result.underdiagnosis.to_csv(output_dir / "underdiagnosis.csv", index=False)
    if plots:
        from chexnet_pl.evaluation.forest import plot_subgroup_forest

        plot_subgroup_forest(
            result.table, output_dir / "subgroups_forest.png", overall,
            title=f"{split} split: AUROC by subgroup ({confidence:.0%} CI, patient bootstrap); "
            "dotted: all images",
        )  # fmt: skip
    return result
