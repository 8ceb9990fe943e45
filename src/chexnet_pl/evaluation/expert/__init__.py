"""AUROC against radiologists' labels (``expert_labels=``), beside NIH's NLP labels on the same images.

Each expert finding is scored by the highest probability of the outputs ``expert_map`` lists; NIH's
labels are mapped the same way (positive when any listed NIH label is), so the two AUROCs of a row
differ only in the reference standard. Intervals come from one patient bootstrap
(``evaluation/resampling.py``) shared by every row, so the gap's interval is that of the difference.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from chexnet_pl.data.nih_table import IMAGE, PATIENT
from chexnet_pl.errors import DataError
from chexnet_pl.evaluation.expert.labels import (
    EXPERT_SETS,
    NOT_AN_OUTPUT,
    SET_ID,
    ExpertMap,
    read_expert_labels,
)
from chexnet_pl.evaluation.predictions import PROB
from chexnet_pl.evaluation.resampling import (
    GroupedAuroc,
    PatientResamples,
    aurocs_of,
    percentile_interval,
)
from chexnet_pl.files import write_csv_atomic

if TYPE_CHECKING:
    from chexnet_pl.evaluation.settings import EvaluationSettings

log = logging.getLogger(__name__)

SETS = (*EXPERT_SETS, "all")
COLUMNS = ("set", "finding", "scored_by", "n", "positives", "auroc", "ci_low", "ci_high",
           "nih_positives", "nih_auroc", "nih_ci_low", "nih_ci_high",
           "gap", "gap_ci_low", "gap_ci_high")  # fmt: skip


@dataclass(frozen=True)
class ExpertLabels:
    """The checked expert table and the output map; built before any model runs."""

    path: Path
    labels: pd.DataFrame  # Image Index → Set Id and one 0/1 column per mapped finding
    mapping: ExpertMap

    @classmethod
    def from_config(cls, path: str | Path, expert_map: Mapping[str, Any] | None) -> ExpertLabels:
        mapping = ExpertMap.from_config(expert_map)
        return cls(Path(path), read_expert_labels(path, mapping.names), mapping)

    def check_outputs(self, class_names: Sequence[str], source: str) -> None:
        self.mapping.check_outputs(class_names, source)

    def score_and_write(
        self,
        predictions: Sequence[pd.DataFrame | None],
        truth: pd.DataFrame,
        output_dir: Path,
        settings: EvaluationSettings,
        splits: pd.Series | None = None,
    ) -> tuple[pd.DataFrame, dict[str, float]]:
        """Score the predictions (tables of ``Image Index``, ``prob_<output>``; of an image in two,
        the first) on the expert-labelled images they cover. ``truth`` (``data.nih.label_index``) gives
        patients and NIH's labels; ``splits`` (image → the model's split), when known, explains
        the images not predicted. Writes expert_aucs.csv."""
        preds = pd.concat([p for p in predictions if p is not None]).drop_duplicates(IMAGE)
        scored = self._scored_images(preds, truth, splits)
        rows = preds.set_index(IMAGE).loc[scored]
        resamples = PatientResamples.of(
            truth.loc[scored, PATIENT].to_numpy(),
            settings.bootstrap_samples,
            settings.bootstrap_seed,
        )
        set_codes = pd.Categorical(self.labels.loc[scored, SET_ID], EXPERT_SETS).codes
        records = []
        for finding in self.mapping.names:
            outputs = list(self.mapping.outputs(finding))
            expert = self.labels.loc[scored, finding].to_numpy()
            nih = _nih_labels(truth, scored, outputs, finding)
            scores = (
                rows[[PROB + o for o in outputs]].to_numpy(np.float64).max(axis=1)
                if outputs
                else None
            )
            records += _finding_rows(finding, self.mapping.describe(finding), scores, expert, nih,
                                     set_codes, resamples, settings.confidence)  # fmt: skip
        table = pd.DataFrame(records, columns=list(COLUMNS))
        table["nih_positives"] = table["nih_positives"].astype("Int64")  # blank where NIH has none
        table["_order"] = table["set"].map(SETS.index)
        table = (
            table.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)
        )
        output_dir.mkdir(parents=True, exist_ok=True)
        write_csv_atomic(table, output_dir / "expert_aucs.csv", index=False)
        log.info(
            "Expert labels (%s; radiologist-adjudicated, Majkowska et al. 2020): %d images of %d "
            "patients. auroc: against the radiologists; nih_auroc: the same images and scores "
            "against NIH's NLP labels mapped the same way; gap = auroc - nih_auroc\n%s",
            self.path.name, len(scored), resamples.num_patients, format_expert_table(table),
        )  # fmt: skip
        return table, expert_metrics(table)

    def _scored_images(
        self, preds: pd.DataFrame, truth: pd.DataFrame, splits: pd.Series | None
    ) -> pd.Index:
        """The expert images the predictions cover; the others are counted, by reason, in a warning."""
        images = self.labels.index
        predicted = images.isin(preds[IMAGE])
        sets = self.labels[SET_ID]
        counts = ", ".join(
            f"{s} {int((predicted & (sets == s)).sum())} of {int((sets == s).sum())}"
            for s in EXPERT_SETS
        )
        if not predicted.any():
            raise DataError(
                f"none of the {len(images)} images of {self.path} is in the predictions; predict "
                "the NIH images it lists (its 'test' set is in NIH's test list, 'val' in train_val)"
            )
        log.info("expert labels: %d of %d images are in the predictions (%s)",
                 predicted.sum(), len(images), counts)  # fmt: skip
        missing = images[~predicted]
        if len(missing):
            reasons = _reasons(missing, truth, splits)
            log.warning(
                "%d of %d expert-labelled images of %s are not in the predictions and are not "
                "scored (%s): %s; e.g. %s",
                len(missing), len(images), self.path.name,
                ", ".join(f"{s} {int((sets[missing] == s).sum())}" for s in EXPERT_SETS),
                "; ".join(f"{n} {why}" for why, n in reasons.items()), missing[:3].tolist(),
            )  # fmt: skip
        scored = images[predicted]
        if splits is not None:
            learnt = scored[splits.reindex(scored).eq("train").to_numpy()]
            if len(learnt):
                log.warning("%d scored expert images are in the model's train split: their "
                            "AUROC is optimistic", len(learnt))  # fmt: skip
        return scored


def _reasons(missing: pd.Index, truth: pd.DataFrame, splits: pd.Series | None) -> dict[str, int]:
    in_data = missing.isin(truth.index)
    reasons = {"not in the NIH metadata of data.root": int((~in_data).sum())}
    if splits is None:
        reasons["in the metadata but not predicted"] = int(in_data.sum())
    else:
        split = splits.reindex(missing[in_data])
        why = {
            "none": "left out of the data (view filter or missing files)",
            "train": "in the model's train split (not predicted: the model learnt from them)",
        }
        for name, n in split.fillna("none").value_counts().items():
            reasons[why.get(name, f"in the model's {name} split (not predicted)")] = int(n)
    return {why: n for why, n in reasons.items() if n}


def _nih_labels(truth: pd.DataFrame, images: pd.Index, outputs: list[str], finding: str):
    """NIH's labels of ``images`` mapped as the outputs are: positive where any listed label is."""
    if not outputs:
        return None
    absent = [o for o in outputs if o not in truth.columns]
    if absent:
        log.warning(
            "NIH's labels have no %s: %s is not compared with NIH's labels", absent, finding
        )
        return None
    return truth.loc[images, outputs].to_numpy(np.float64).max(axis=1)


def _auroc_by_set(scores, positive, set_codes, resamples) -> tuple[np.ndarray, np.ndarray]:
    """AUROC in test, val and all: the point values (3) and per resample (B × 3)."""
    args = (resamples.codes, resamples.num_patients)
    return aurocs_of(
        [
            GroupedAuroc(scores, positive, set_codes, len(EXPERT_SETS), *args),
            GroupedAuroc(scores, positive, np.zeros(len(scores), np.int64), 1, *args),
        ],
        resamples,
    )


def _interval(samples: np.ndarray, point: np.ndarray, confidence: float):
    return percentile_interval(samples, confidence, ~np.isnan(point))


def _finding_rows(finding, scored_by, scores, expert, nih, set_codes, resamples, confidence):
    members = [set_codes == i for i in range(len(EXPERT_SETS))] + [np.ones(len(expert), bool)]
    nan3 = np.full(len(SETS), np.nan)
    point = low = high = nih_point = nih_low = nih_high = gap = gap_low = gap_high = nan3
    if scores is not None:
        point, samples = _auroc_by_set(scores, expert, set_codes, resamples)
        low, high = _interval(samples, point, confidence)
        if nih is not None:
            nih_point, nih_samples = _auroc_by_set(scores, nih, set_codes, resamples)
            nih_low, nih_high = _interval(nih_samples, nih_point, confidence)
            gap = point - nih_point
            gap_low, gap_high = _interval(samples - nih_samples, gap, confidence)
    return [
        (name, finding, scored_by, int(m.sum()), int(expert[m].sum()), point[i], low[i], high[i],
         np.nan if nih is None else int(nih[m].sum()), nih_point[i], nih_low[i], nih_high[i],
         gap[i], gap_low[i], gap_high[i])
        for i, (name, m) in enumerate(zip(SETS, members, strict=True))
    ]  # fmt: skip


def format_expert_table(table: pd.DataFrame) -> str:
    """Readable text: how each finding is scored, then AUROC (95% CI) against each reference;
    a finding the model has no output for says so."""

    def with_ci(values) -> str:
        value, low, high = values
        if pd.isna(value):
            return "undefined"
        return f"{value:.3f}" + ("" if pd.isna(low) else f" ({low:.3f} to {high:.3f})")

    def column(names: list[str]) -> list[str]:
        cells = [with_ci(v) for v in table[names].itertuples(index=False)]
        return [
            NOT_AN_OUTPUT if s == NOT_AN_OUTPUT else c
            for s, c in zip(table["scored_by"], cells, strict=True)
        ]

    shown = pd.DataFrame(
        {
            "set": table["set"],
            "finding": table["finding"],
            "n": table["n"],
            "positives": table["positives"],
            "AUROC expert (95% CI)": column(["auroc", "ci_low", "ci_high"]),
            "NIH positives": table["nih_positives"].map(lambda v: "" if pd.isna(v) else f"{int(v)}"),
            "AUROC NIH labels (95% CI)": column(["nih_auroc", "nih_ci_low", "nih_ci_high"]),
            "gap (95% CI)": column(["gap", "gap_ci_low", "gap_ci_high"]),
        }
    )  # fmt: skip
    scored_by = dict(zip(table["finding"], table["scored_by"], strict=False))
    legend = "; ".join(f"{finding} <- {how}" for finding, how in scored_by.items())
    return f"scored by: {legend}\n{shown.to_string(index=False)}"


def expert_metrics(table: pd.DataFrame) -> dict[str, float]:
    """``expert/<set>/auroc_<finding>`` and ``expert/<set>/nih_auroc_<finding>`` where defined."""
    metrics = {}
    for row in table.itertuples(index=False):
        key = row.finding.replace(" ", "_")
        for column in ("auroc", "nih_auroc"):
            value = getattr(row, column)
            if pd.notna(value):
                metrics[f"expert/{row.set}/{column}_{key}"] = float(value)
    return metrics


def log_expert_to_wandb(run, table: pd.DataFrame) -> None:
    """The expert table into a W&B run (its AUROCs also go to the summary with the other metrics)."""
    import wandb

    plain = table.astype({"nih_positives": "float64"})  # W&B tables take NaN, not pandas' NA
    run.log({"expert/aucs": wandb.Table(dataframe=plain)})
