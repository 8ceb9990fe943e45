"""Which subgroups an evaluation compares, and which subgroup each image is in (sex, age band,
view), read from NIH's metadata; the settings of the subgroup report (``evaluation.*``)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from chexnet_pl.data.labelled_images import AGE, DATASET, MANUFACTURER, PEDIATRIC, SEX, VIEW
from chexnet_pl.evaluation.report import THRESHOLD_METHODS
from chexnet_pl.validation import Problems

log = logging.getLogger(__name__)

ATTRIBUTES = {"sex": SEX, "age": AGE, "view": VIEW, "dataset": DATASET,
              "manufacturer": MANUFACTURER, "pediatric": PEDIATRIC}  # fmt: skip
UNKNOWN = "unknown"
# Why a subgroup or cell is left out of gaps and means (the report's ``note`` column).
TOO_SMALL = "too small"
UNDEFINED = "undefined"


@dataclass(frozen=True)
class Subgroups:
    """What the subgroup report compares and how.

    ``age_edges=(20, 40, 60, 80)`` gives 0-20, 20-40, 40-60, 60-80, 80+ (lower edge included);
    ages above ``max_age`` go to ``unknown``. A subgroup with fewer than ``min_images`` images,
    or a subgroup × finding cell with fewer than ``min_positives`` positives (or negatives), is
    reported but marked too small and kept out of gaps and of the findings a mean is taken over.
    ``underdiagnosis_threshold``: how the "No Finding" threshold of the underdiagnosis rate is
    chosen on validation — ``f1`` (F1-maximising, as Seyyed-Kalantari et al. 2021) or ``youden``.
    The defaults are ``conf/evaluation/default.yaml``'s (see ``from_settings``).
    """

    attributes: tuple[str, ...]
    age_edges: tuple[int, ...]
    max_age: int
    min_images: int = field(kw_only=True)
    min_positives: int = field(kw_only=True)
    underdiagnosis_threshold: str = field(kw_only=True)

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
        problems.number("min_subgroup_images", self.min_images, minimum=1, integer=True)
        problems.number("min_subgroup_positives", self.min_positives, minimum=1, integer=True)
        problems.choice("underdiagnosis_threshold", self.underdiagnosis_threshold,
                        THRESHOLD_METHODS)  # fmt: skip
        problems.raise_if_any()

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | Any) -> Subgroups:
        """From the ``evaluation`` settings (a mapping or ``EvaluationSettings``)."""
        get = settings.get if isinstance(settings, Mapping) else lambda k: getattr(settings, k)
        return cls(
            tuple(get("subgroups")), tuple(get("age_bands")), get("max_age"),
            min_images=get("min_subgroup_images"), min_positives=get("min_subgroup_positives"),
            underdiagnosis_threshold=get("underdiagnosis_threshold"),
        )  # fmt: skip

    @property
    def size_rule(self) -> str:
        return f"at least {self.min_images} images and {self.min_positives} positives and negatives"


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
        elif attribute in ("dataset", "manufacturer", "pediatric"):
            labels, names = _categorical(meta[column], [])
        else:
            labels, names = _categorical(meta[column], ["PA", "AP"])
        if (labels == UNKNOWN).any():
            names.append(UNKNOWN)
        result[attribute] = (labels, names)
    return result
