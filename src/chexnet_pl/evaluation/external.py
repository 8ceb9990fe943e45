"""A model's outputs against another dataset's labels: external validation.

The outputs and the labels are matched by name and by the label map's synonyms
(``evaluation.label_map``; ``Effusion`` ↔ ``Pleural Effusion`` by default), so an NIH model is
scored on CheXpert's Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion, Pneumonia,
Pneumothorax and No Finding. Rows keep the model's output names; the mean is over the findings
scored. A dataset may score a label against the maximum of several outputs (its
``label_from_outputs``: RSNA's Lung Opacity ← max(Pneumonia, Consolidation, Infiltration)); that
maximum is added to the predictions as an output of the label's name (``combined_outputs``). Beside each external AUROC, the model's internal one (its own test split's ``aucs.csv``),
with the internal mean taken over the same findings, so the two columns compare like with like.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from chexnet_pl.errors import ConfigError, DataError
from chexnet_pl.evaluation.auroc import with_mean
from chexnet_pl.label_sets import (
    OUTPUTS_SIDE,
    finding_names,
    label_map_problems,
    match_labels,
    mean_row,
    shared_label_problems,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelMatch:
    """Which model outputs are scored against which of the data's labels."""

    pairs: list[tuple[str, str]]  # (output, label), in output order
    outputs: list[str]  # every model output
    labels: list[str]  # every data label

    @property
    def scored(self) -> list[str]:
        return [output for output, _ in self.pairs]

    @property
    def internal(self) -> bool:
        """The data has exactly the model's outputs, by the same names (no mapping at all)."""
        same = all(output == label for output, label in self.pairs)
        return same and self.scored == self.outputs and len(self.pairs) == len(self.labels)

    def describe(self) -> str:
        """One line: the outputs scored, against which labels, and what is left out."""
        mapped = [f"{o} <-> {lab}" for o, lab in self.pairs if o != lab]
        unscored = [o for o in self.outputs if o not in self.scored]
        unused = [lab for lab in self.labels if lab not in {lab for _, lab in self.pairs}]
        return (
            f"scoring {len(self.pairs)} of the model's {len(self.outputs)} outputs against the "
            f"data's labels: {self.scored}"
            + (f"; label map: {', '.join(mapped)}" if mapped else "")
            + (f"; outputs the data has no label for: {unscored}" if unscored else "")
            + (f"; labels the model has no output for: {unused}" if unused else "")
        )


def label_map_for(label_map: Mapping[str, str] | None, datamodule: object) -> dict[str, str]:
    """``evaluation.label_map`` with the dataset's own spellings of NIH's outputs (a data
    module's ``label_spellings``, e.g. VinDr-CXR's ``Effusion: Pleural effusion``), which take
    precedence for the outputs they name: they are facts of that dataset, not a choice."""
    return {**dict(label_map or {}), **dict(getattr(datamodule, "label_spellings", None) or {})}


def match_model_to_data(
    outputs: Sequence[str],
    labels: Sequence[str],
    label_map: Mapping[str, str] | None = None,
    shared: bool = False,
) -> LabelMatch:
    """The outputs the data can score (``match_labels``). A ``ConfigError`` when an entry of the
    map names an output or a label that is not there (with the closest names), or sends two
    outputs onto one label without ``shared`` (``evaluation.label_map_shared``); a
    ``DataError`` when nothing can be scored."""
    sides = {OUTPUTS_SIDE: list(outputs), "the data's labels": list(labels)}
    # On the data it was trained on, every output is its own label: the map is not used (it may
    # hold entries for another dataset).
    problems = [] if list(outputs) == list(labels) else label_map_problems(label_map, sides)
    if not problems:
        problems = shared_label_problems(outputs, labels, label_map, shared)
    if problems:
        raise ConfigError(*problems)
    match = LabelMatch(
        match_labels(outputs, labels, label_map, shared), list(outputs), list(labels)
    )
    if not match.pairs:
        raise DataError(
            f"the model's outputs {list(outputs)} and the data's labels {list(labels)} share no "
            "name: nothing to score. Map differently spelled labels with "
            "evaluation.label_map='{output: label}'"
        )
    return match


def combined_outputs(
    outputs: Sequence[str],
    labels: Sequence[str],
    label_from_outputs: Mapping[str, Sequence[str]] | None,
) -> dict[str, list[str]]:
    """The data's labels that are scored against the maximum of several model outputs (a
    dataset's ``label_from_outputs``, e.g. RSNA's ``Lung Opacity`` ← ``Pneumonia``,
    ``Consolidation``, ``Infiltration``): label → the listed outputs the model has. A label the
    model has an output of that name for is scored on that output instead; one whose listed
    outputs the model lacks entirely is not scored."""
    combined = {}
    for label, sources in (label_from_outputs or {}).items():
        present = [name for name in sources if name in outputs]
        if label in labels and label not in outputs and present:
            combined[str(label)] = present
            missing = [name for name in sources if name not in outputs]
            log.info("%s is scored against max(%s) of the model's outputs%s", label,
                     ", ".join(present), f" (it has no {missing})" if missing else "")  # fmt: skip
    return combined


def add_combined(preds: pd.DataFrame, combined: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """``preds`` with a ``prob_<label>`` column per combined label: the maximum of its outputs'
    probabilities (``combined_outputs``)."""
    from chexnet_pl.evaluation.predictions import prob_columns

    preds = preds.copy()
    for label, sources in combined.items():
        preds[prob_columns([label])[0]] = preds[prob_columns(sources)].max(axis=1)
    return preds


def truth_for(truth: pd.DataFrame, match: LabelMatch) -> pd.DataFrame:
    """The data's truth table with each matched label's column named by its model output (a
    label that several outputs take, ``evaluation.label_map_shared``, is copied for each)."""
    taken = [label for _, label in match.pairs]
    renamed = truth.rename(columns={label: output for output, label in match.pairs
                                    if output != label and taken.count(label) == 1})  # fmt: skip
    for output, label in match.pairs:
        if taken.count(label) > 1 and output != label:
            renamed[output] = truth[label]
    return renamed


def reference_for(
    reference: tuple[Mapping[str, float], float] | None, match: LabelMatch
) -> tuple[dict[str, float], float] | None:
    """A dataset's published per-label AUROC (keyed by its label names) keyed by output name;
    its mean only when the findings scored are exactly the reference's."""
    if reference is None:
        return None
    values, mean = reference
    by_output = {output: float(values[label]) for output, label in match.pairs if label in values}
    scored = {label for output, label in match.pairs if output in finding_names(match.scored)}
    return by_output, float(mean) if scored == set(values) else float("nan")


def read_internal_aucs(path: str | Path, names: Sequence[str]) -> dict[str, float]:
    """Per output, the AUROC in a run's own ``aucs.csv`` (NaN where it has none)."""
    path = Path(path)
    try:
        table = pd.read_csv(path, index_col=0)
        values = pd.to_numeric(table["auroc"], errors="coerce")
    except (OSError, KeyError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(
            f"cannot read the internal AUROC from {path} ({exc}); give the aucs.csv of the "
            "model's own evaluation (internal_aucs=)"
        ) from exc
    return {name: float(values.get(name, np.nan)) for name in names}


def add_internal(table: pd.DataFrame, internal: Mapping[str, float]) -> pd.DataFrame:
    """``internal_auroc`` and ``external_minus_internal`` beside ``auroc``; the mean row's
    internal value is the mean over the findings scored here."""
    names = [n for n in table.index if n in internal]
    values = pd.Series({name: internal[name] for name in names}, dtype=float)
    column = [values.get(name, np.nan) for name in table.index]
    mean = mean_row(names)
    if mean in table.index:
        column[list(table.index).index(mean)] = float(with_mean(values.to_numpy(), names)[-1])
    table = table.copy()
    at = list(table.columns).index("auroc") + 1
    table.insert(at, "internal_auroc", column)
    table.insert(at + 1, "external_minus_internal", table["auroc"] - table["internal_auroc"])
    return table
