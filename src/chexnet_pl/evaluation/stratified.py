"""Shortcut audit (``evaluation.stratify``): a finding's AUROC within each value of a covariate
the model should not need — a support device for a pneumothorax (a chest drain treats one), the
view for any finding (AP films are taken of sicker, bed-bound patients), the X-ray unit's maker.
A model that reads the covariate instead of the finding scores well where the two go together and
poorly where they do not: the strata's AUROCs differ.

Per (finding, covariate) pair and stratum: images, positives, AUROC with a patient-bootstrap CI
(``resampling``), and the two-sided DeLong p-value of the difference from the other stratum (the
largest compared stratum when there are more than two). Strata are different images, so the
unpaired form is used: the variance of a difference of two independent AUROCs is the sum of
their DeLong variances, each ``var(V10)/m + var(V01)/n`` of its own structural components
(``compare.placement_values``). DeLong treats images as independent; a patient imaged with and
without a device is in both strata. The p-values are not adjusted for the number of pairs.

A covariate is either a subgroup attribute (``sex``, ``age``, ``view``, ``manufacturer``,
``pediatric``, ``dataset``, or its column name, e.g. ``View Position``), read exactly as the
subgroup report reads it (``subgroup_labels``), or one of the data's label columns (e.g. CheXpert's
and MIMIC-CXR's ``Support Devices``): ``positive``, ``negative`` or ``unknown`` after the data's
own uncertainty settings (``data.uncertain``: an uncertain label is unknown under ``ignore``,
negative under ``zeros``, positive under ``ones``; ``data.not_mentioned``: a blank is negative, or
unknown with ``missing``). Unknown strata are reported and kept out of the comparisons.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from chexnet_pl.errors import ConfigError
from chexnet_pl.evaluation.compare import DeLong, placement_values
from chexnet_pl.evaluation.report import whole_numbers
from chexnet_pl.evaluation.resampling import (
    GroupedAuroc,
    PatientResamples,
    aurocs_of,
    percentile_interval,
)
from chexnet_pl.evaluation.subgroups.labels import (
    ATTRIBUTES,
    TOO_SMALL,
    UNDEFINED,
    UNKNOWN,
    Subgroups,
    subgroup_labels,
)
from chexnet_pl.files import write_csv_atomic
from chexnet_pl.label_sets import finding_names, labelled
from chexnet_pl.validation import did_you_mean

log = logging.getLogger(__name__)

AUTO = "auto"
EACH = "each finding"
STRATIFIED_CSV = "stratified.csv"
FIGURE_STEM = "stratified"
SHORTCUT_P = 0.05  # a difference this unlikely by chance is warned about as a possible shortcut
REFERENCE = "reference"
COLUMNS = ["finding", "covariate", "stratum", "n", "n_pos", "n_neg", "patients", "auroc",
           "ci_low", "ci_high", "compared_with", "delong_p", "note"]  # fmt: skip
# evaluation.stratify=auto: the first row whose covariate the data has gives the pairs (a table
# in code, so one shipped default serves every dataset): CheXpert and MIMIC-CXR label support
# devices, PadChest names the unit's maker, NIH (and datasets with only a view) the view.
DEFAULTS: tuple[tuple[str, tuple[str, ...] | str, str], ...] = (
    ("Support Devices", ("Pneumothorax",), "CheXpert, MIMIC-CXR: a chest drain for a pneumothorax"),
    ("manufacturer", EACH, "PadChest: the X-ray unit's maker"),
    ("view", EACH, "NIH: PA or AP"),
)


@dataclass(frozen=True)
class Pair:
    """One (finding, covariate) pair of ``evaluation.stratify``."""

    finding: str
    covariate: str


def stratify_problems(value: Any) -> list[str]:
    """What is wrong with an ``evaluation.stratify`` setting's form (names are checked against
    the data when it is scored): ``auto``, ``[]`` or a list of [finding, covariate] pairs."""
    example = "e.g. evaluation.stratify=[[Pneumothorax,Support Devices],[Edema,view]]"
    if value == AUTO:
        return []
    if isinstance(value, str) or not isinstance(value, Sequence):
        return [f"evaluation.stratify={value!r}: give auto, [] (none) or a list of "
                f"[finding, covariate] pairs, {example}"]  # fmt: skip
    problems = []
    for i, item in enumerate(value):
        if (
            isinstance(item, str)
            or not isinstance(item, Sequence)
            or len(item) != 2
            or not all(isinstance(v, str) and v.strip() for v in item)
        ):
            problems.append(f"evaluation.stratify[{i}]={_plain(item)!r} is not a [finding, "
                            f"covariate] pair of two names; {example}")  # fmt: skip
        elif item[0].strip() == item[1].strip():
            problems.append(f"evaluation.stratify[{i}]={_plain(item)!r}: a finding cannot be "
                            "its own covariate (each stratum would hold one class only)")  # fmt: skip
    return problems


def _plain(item: Any) -> Any:
    return list(item) if isinstance(item, Sequence) and not isinstance(item, str) else item


def parse_pairs(value: Any) -> str | tuple[Pair, ...]:
    """``auto`` or the pairs of a checked ``evaluation.stratify`` (repeats kept once)."""
    if value == AUTO:
        return AUTO
    pairs = [Pair(f.strip(), c.strip()) for f, c in value]
    return tuple(dict.fromkeys(pairs))


def _attribute(name: str) -> str | None:
    """The subgroup attribute a covariate names, by key (``view``) or column (``View Position``)."""
    for key, column in ATTRIBUTES.items():
        if name.lower() in (key, column.lower()):
            return key
    return None


def covariates_of(meta: pd.DataFrame) -> list[str]:
    """The covariates ``meta`` (a truth frame) has: subgroup attributes, then label columns."""
    attributes = [key for key, column in ATTRIBUTES.items() if column in meta.columns]
    return [*attributes, *meta.attrs.get("labels", [])]


def strata_of(meta: pd.DataFrame, covariate: str, spec: Subgroups) -> tuple[np.ndarray, list[str]]:
    """Per image, its stratum of ``covariate``, and the strata in report order (``unknown``
    last when present). An attribute is read as the subgroup report reads it; a label column
    gives positive / negative / unknown (NaN: not known under the data's uncertainty settings)."""
    attribute = _attribute(covariate)
    if attribute is not None:
        spec = dataclasses.replace(spec, attributes=(attribute,))
        labels, names = subgroup_labels(meta, spec)[attribute]
        return labels, names
    values = meta[covariate].to_numpy(dtype=np.float64)
    labels = np.full(len(values), UNKNOWN, dtype=object)
    known = labelled(values)
    labels[known & (values > 0.5)] = "positive"
    labels[known & (values <= 0.5)] = "negative"
    names = [n for n in ("positive", "negative") if (labels == n).any()]
    if (labels == UNKNOWN).any():
        names.append(UNKNOWN)
    return labels, names


def _has(meta: pd.DataFrame, covariate: str) -> bool:
    attribute = _attribute(covariate)
    if attribute is not None:
        return ATTRIBUTES[attribute] in meta.columns
    return covariate in meta.attrs.get("labels", [])


def pairs_for(setting: Any, meta: pd.DataFrame, names: Sequence[str]) -> list[Pair]:
    """The pairs to audit: those asked for (a finding the model does not score or a covariate
    the data lacks: one ``ConfigError`` naming each), or with ``auto`` the first ``DEFAULTS`` row
    whose covariate the data has (defaults it cannot score: skipped with an info line)."""
    pairs = parse_pairs(setting)
    findings = finding_names(names)
    if pairs != AUTO:
        problems = []
        for pair in pairs:
            if pair.finding not in names:
                problems.append(
                    f"evaluation.stratify: finding {pair.finding!r} is not one this evaluation "
                    f"scores{did_you_mean(pair.finding, names)}; it scores {list(names)}"
                )
            if not _has(meta, pair.covariate):
                problems.append(
                    f"evaluation.stratify: covariate {pair.covariate!r} (paired with "
                    f"{pair.finding}) is not in this data"
                    f"{did_you_mean(pair.covariate, covariates_of(meta))}; it has "
                    f"{covariates_of(meta)} (evaluation.stratify=[] for no audit)"
                )
        if problems:
            raise ConfigError(*problems)
        return list(pairs)
    for covariate, wanted, why in DEFAULTS:
        if not _has(meta, covariate):
            log.info("shortcut audit: default pair(s) (%s, %s) skipped: the data has no %s",
                     EACH if wanted == EACH else ", ".join(wanted), covariate, covariate)  # fmt: skip
            continue
        chosen = findings if wanted == EACH else [f for f in wanted if f in names]
        for finding in [] if wanted == EACH else [f for f in wanted if f not in names]:
            log.info("shortcut audit: default pair (%s, %s) skipped: no %s output is scored",
                     finding, covariate, finding)  # fmt: skip
        if chosen:
            log.info("shortcut audit (evaluation.stratify=auto; %s): %s by %s", why,
                     ", ".join(chosen), covariate)  # fmt: skip
            return [Pair(f, covariate) for f in chosen]
    log.info("shortcut audit: no default pair for this data (evaluation.stratify=[[finding, "
             "covariate], ...] sets them)")  # fmt: skip
    return []


def auroc_variance(scores: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """One AUROC and its DeLong variance ``var(V10)/m + var(V01)/n``; NaN with fewer than two
    positives or negatives."""
    positive = np.asarray(positive) > 0.5
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        return float("nan"), float("nan")
    v10, v01 = placement_values(np.asarray(scores, dtype=np.float64), positive)
    return float(v10.mean()), float(v10.var(ddof=1) / m + v01.var(ddof=1) / n)


def unpaired_delong(
    scores_a: np.ndarray, positive_a: np.ndarray, scores_b: np.ndarray, positive_b: np.ndarray
) -> DeLong:
    """Two-sided DeLong test of AUROC(a) = AUROC(b) on two independent sets of images: the
    difference's variance is the sum of the two AUROCs' variances."""
    auroc_a, var_a = auroc_variance(scores_a, positive_a)
    auroc_b, var_b = auroc_variance(scores_b, positive_b)
    variance = var_a + var_b
    if np.isnan(variance):
        return DeLong(auroc_a, auroc_b, variance, np.nan, np.nan)
    delta = auroc_a - auroc_b
    if variance <= 1e-15:  # both perfectly separated (or both tied throughout)
        z = 0.0 if abs(delta) < 1e-12 else float(np.sign(delta) * np.inf)
    else:
        z = delta / np.sqrt(variance)
    return DeLong(auroc_a, auroc_b, variance, float(z), float(2 * norm.sf(abs(z))))


def score_stratified(
    scores: np.ndarray,
    labels: np.ndarray,
    patients: np.ndarray,
    meta: pd.DataFrame,
    names: Sequence[str],
    pairs: Sequence[Pair],
    spec: Subgroups,
    bootstrap_samples: int = 1000,
    bootstrap_seed: int = 0,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """The ``stratified.csv`` table (``COLUMNS``) for predictions row-aligned with ``meta``. A
    stratum is compared when it is not unknown, has ``spec.min_images`` images and
    ``spec.min_positives`` positives and negatives (else its ``note`` says why); pairs with
    p < ``SHORTCUT_P`` are warned about."""
    names = list(names)
    resamples = PatientResamples.of(patients, bootstrap_samples, bootstrap_seed)
    plans, blocks = [], []
    for pair in pairs:
        j = names.index(pair.finding)
        strata, order = strata_of(meta, pair.covariate, spec)
        known = labelled(labels[:, j])
        codes = np.array([order.index(s) for s in strata], dtype=np.int64)
        codes = np.where(known, codes, -1)  # an image without this finding's label: no stratum
        positive = known & (labels[:, j] > 0.5)
        plans.append(GroupedAuroc(scores[:, j], positive, codes, len(order), resamples.codes,
                                  resamples.num_patients))  # fmt: skip
        blocks.append((pair, j, order, codes, positive))
    if not plans:
        return pd.DataFrame(columns=COLUMNS)
    point, samples = aurocs_of(plans, resamples)
    low, high = percentile_interval(samples, confidence, ~np.isnan(point))
    rows, start = [], 0
    for pair, j, order, codes, positive in blocks:
        rows += _pair_rows(pair, scores[:, j], positive, codes, order, patients,
                           point[start : start + len(order)], low[start : start + len(order)],
                           high[start : start + len(order)], spec, bootstrap_samples)  # fmt: skip
        start += len(order)
    table = pd.DataFrame(rows, columns=COLUMNS)
    _warn_shortcuts(table)
    return table


def _pair_rows(pair, scores, positive, codes, order, patients, point, low, high, spec,
               bootstrap_samples) -> list[dict]:  # fmt: skip
    """One row per stratum of one pair, each compared with the other (or the largest) stratum."""
    members = [codes == g for g in range(len(order))]
    n = np.array([m.sum() for m in members])
    n_pos = np.array([(m & positive).sum() for m in members])
    n_neg = n - n_pos
    notes = []
    for g, stratum in enumerate(order):
        if stratum == UNKNOWN:
            notes.append(UNKNOWN)
        elif np.isnan(point[g]):
            notes.append(UNDEFINED)
        elif n[g] < spec.min_images or min(n_pos[g], n_neg[g]) < max(spec.min_positives, 2):
            notes.append(TOO_SMALL)
        else:
            notes.append("")
    compared = [g for g in range(len(order)) if notes[g] == ""]
    shown = [g for g in range(len(order)) if n[g] > 0]  # a value no image of it has: no row
    reference = max(compared, key=lambda g: n[g]) if compared else None
    rows = []
    for g in shown:
        stratum, other, p = order[g], "", float("nan")
        if g in compared and len(compared) >= 2:
            target = [c for c in compared if c != g][0] if len(compared) == 2 else reference
            if target == g:
                other = REFERENCE
            else:
                other = order[target]
                inside, there = members[g], members[target]
                p = unpaired_delong(scores[inside], positive[inside], scores[there],
                                    positive[there]).p_value  # fmt: skip
        rows.append({
            "finding": pair.finding, "covariate": pair.covariate, "stratum": stratum,
            "n": int(n[g]), "n_pos": int(n_pos[g]), "n_neg": int(n_neg[g]),
            "patients": int(len(np.unique(patients[members[g]]))), "auroc": float(point[g]),
            "ci_low": float(low[g]) if bootstrap_samples else float("nan"),
            "ci_high": float(high[g]) if bootstrap_samples else float("nan"),
            "compared_with": other, "delong_p": p, "note": notes[g],
        })  # fmt: skip
    return rows


def _warn_shortcuts(table: pd.DataFrame) -> None:
    flagged, said = table[table["delong_p"] < SHORTCUT_P], set()
    for row in flagged.itertuples():
        comparison = (row.finding, row.covariate, frozenset((row.stratum, row.compared_with)))
        if comparison in said:  # two strata: both rows carry the one comparison
            continue
        said.add(comparison)
        reference = table[(table["finding"] == row.finding) & (table["covariate"] == row.covariate)
                          & (table["stratum"] == row.compared_with)].iloc[0]  # fmt: skip
        log.warning(
            "possible shortcut: %s AUROC %.3f where %s is %s vs %.3f where it is %s (DeLong p = "
            "%.2g, unadjusted; stratified.csv)", row.finding, row.auroc, row.covariate,
            row.stratum, reference["auroc"], reference["stratum"], row.delong_p,
        )  # fmt: skip


def write_stratified(
    table: pd.DataFrame,
    output_dir: Path,
    plots: bool = True,
    scope: str = "test split",
    confidence: float = 0.95,
    model: str = "",
    figure_format: str = "png",
    images: int = 0,
) -> Path:
    """``stratified.csv`` and, with ``plots``, ``stratified.<figure_format>``: per pair, each
    stratum's AUROC with its CI (one panel per covariate; grey: not compared)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = write_csv_atomic(whole_numbers(table), output_dir / STRATIFIED_CSV, index=False)
    if plots and len(table):
        plot_stratified(table, output_dir, scope, confidence, model, figure_format, images)
    return path


def plot_stratified(
    table: pd.DataFrame,
    output_dir: Path,
    scope: str,
    confidence: float,
    model: str,
    figure_format: str,
    images: int,
) -> Path:
    """A forest panel per covariate: a row per finding × stratum, its AUROC and CI, the
    DeLong p-value beside each compared stratum."""
    from chexnet_pl.evaluation.forest import FONT, WIDTH, forest_panel, shared_limits
    from chexnet_pl.evaluation.plots import figure_title, plt
    from chexnet_pl.files import figure_path, save_figure

    covariates = list(dict.fromkeys(table["covariate"]))
    labels_of = {c: [f"{r.finding} · {r.stratum} (n={r.n}, {r.n_pos} pos)"
                     for r in table[table["covariate"] == c].itertuples()] for c in covariates}  # fmt: skip
    longest = max(len(label) for labels in labels_of.values() for label in labels)
    left, right = min(3.6, 0.3 + 0.055 * longest), 0.75  # inches: row names; p-values
    top, above, below = 0.75, 0.3, 0.45  # inches: the title; a panel's heading; its x ticks
    heights = [0.25 * len(labels_of[c]) + 0.2 for c in covariates]
    height = top + sum(heights) + (above + below) * len(covariates) + 0.25
    figure = plt.figure(figsize=(WIDTH, height))
    limits, y0 = shared_limits(table), height - top
    for covariate in covariates:
        rows, panel = table[table["covariate"] == covariate], heights[covariates.index(covariate)]
        y0 -= above + panel
        ax = figure.add_axes([left / WIDTH, y0 / height, (WIDTH - left - right) / WIDTH,
                              panel / height])  # fmt: skip
        y0 -= below
        forest_panel(ax, labels_of[covariate], rows["auroc"], rows["ci_low"], rows["ci_high"],
                     greyed=[isinstance(v, str) and v != "" for v in rows["note"]])  # fmt: skip
        ax.set_title(f"by {covariate}", fontsize=FONT + 1, loc="left")
        for y, row in zip(np.arange(len(rows))[::-1], rows.itertuples(), strict=True):
            if not np.isnan(row.delong_p):
                ax.text(1.01, y, f"p={row.delong_p:.2g}", transform=ax.get_yaxis_transform(),
                        va="center", fontsize=FONT,
                        color="tab:red" if row.delong_p < SHORTCUT_P else "black")  # fmt: skip
        ax.set_xlim(*limits)
        if covariate != covariates[-1]:
            ax.set_xlabel("")
    title = (
        figure_title("Shortcut audit: AUROC by stratum", scope, images, model)
        + f"\n{confidence:.0%} CI (patient bootstrap); p: DeLong (unpaired) vs the other or "
        "largest stratum; grey: not compared"
    )
    return save_figure(figure, figure_path(output_dir, FIGURE_STEM, figure_format), title,
                       title_size=FONT + 1, tight=False)  # fmt: skip
