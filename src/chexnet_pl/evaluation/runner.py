"""One evaluation code path for ``train`` (after fitting) and ``evaluate`` (a checkpoint or a file)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from chexnet_pl.data.nih_table import IMAGE, PATIENT, label_matrix
from chexnet_pl.errors import ConfigError, DataError
from chexnet_pl.evaluation.calibration import CalibrationSettings, write_calibration_report
from chexnet_pl.evaluation.plots import plot_curves
from chexnet_pl.evaluation.predictions import (
    TTA_MODES,
    PredictionCache,
    predict,
    prob_columns,
    tta_resize,
)
from chexnet_pl.evaluation.report import (
    MEAN_ROW,
    THRESHOLD_METHODS,
    choose_threshold,
    format_report,
    score_predictions,
)
from chexnet_pl.evaluation.subgroups import (
    METADATA_COLUMNS,
    Subgroups,
    format_summary,
    write_subgroup_report,
)
from chexnet_pl.labels import class_names as all_class_names
from chexnet_pl.models.precision import check_precision
from chexnet_pl.validation import Problems, settings_from

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluationSettings:
    """``evaluation.*`` (conf/evaluation/default.yaml, where every default is): judged here,
    once, when built — by ``train`` and ``evaluate`` before any work, by their pre-flight check."""

    tta: str
    threshold: str
    bootstrap_samples: int
    bootstrap_seed: int
    confidence: float
    precision: str
    plots: bool
    subgroups: Sequence[str]
    age_bands: Sequence[int]
    max_age: int
    calibrate: str
    calibration_bins: int

    def __post_init__(self) -> None:
        problems = Problems("evaluation")
        problems.choice("tta", self.tta, TTA_MODES)
        problems.choice("threshold", self.threshold, THRESHOLD_METHODS)
        try:
            check_precision(self.precision, "evaluation.precision")
        except ConfigError as exc:
            problems.extend(exc)
        problems.number("bootstrap_samples", self.bootstrap_samples, minimum=0, integer=True)
        problems.number("bootstrap_seed", self.bootstrap_seed, minimum=0, integer=True)
        problems.number("confidence", self.confidence, minimum=0, maximum=1, exclusive=True)
        problems.flag("plots", self.plots)
        for key in ("subgroups", "age_bands"):  # lists from the config, tuples once built
            value = getattr(self, key)
            if isinstance(value, Sequence) and not isinstance(value, str):
                object.__setattr__(self, key, tuple(value))
        for build in (self._subgroup_spec, self._calibration):
            try:
                build()
            except ConfigError as exc:
                problems.extend(exc)
        problems.raise_if_any()

    def _subgroup_spec(self) -> Subgroups:
        return Subgroups(self.subgroups, self.age_bands, self.max_age)

    def _calibration(self) -> CalibrationSettings:
        return CalibrationSettings(self.calibrate, self.calibration_bins)

    @property
    def subgroup_spec(self) -> Subgroups:
        return self._subgroup_spec()

    @property
    def calibration(self) -> CalibrationSettings:
        return self._calibration()

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> EvaluationSettings:
        """The ``evaluation`` section; unknown, missing and bad values in one ``ConfigError``."""
        return settings_from(cls, section, "evaluation")


def label_index(table: pd.DataFrame) -> pd.DataFrame:
    """Metadata rows → ``Image Index``-indexed frame of ``Patient ID``, all 15 label columns and
    the subgroup metadata the table has (sex, age, view, follow-up)."""
    names = all_class_names(True)
    labels = label_matrix(table["Finding Labels"], names)
    frame = pd.DataFrame(labels, columns=names, index=pd.Index(table[IMAGE], name=IMAGE))
    frame.insert(0, PATIENT, table[PATIENT].to_numpy())
    for column in METADATA_COLUMNS:
        if column in table.columns:
            frame[column] = table[column].to_numpy()
    return frame


def _aligned(preds: pd.DataFrame, truth: pd.DataFrame, names: Sequence[str]):
    rows = truth.loc[preds[IMAGE]]
    return (
        preds[prob_columns(names)].to_numpy(np.float64),
        rows[list(names)].to_numpy(),
        rows[PATIENT].to_numpy(),
    )


def score_and_write(
    preds: pd.DataFrame,
    truth: pd.DataFrame,
    names: Sequence[str],
    output_dir: Path,
    settings: EvaluationSettings,
    split: str = "test",
    val_preds: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Score a predictions table against ``truth`` (see ``label_index``); write aucs.csv and plots."""
    if preds.empty:
        raise DataError(f"no predictions to score for the {split} split")
    scores, labels, patients = _aligned(preds, truth, names)
    if val_preds is not None and len(val_preds):
        val_scores, val_labels, _ = _aligned(val_preds, truth, names)
        chosen_on = "val"
    else:
        val_scores, val_labels = scores, labels
        chosen_on = split
        log.warning(
            "no validation predictions: operating thresholds are chosen on %s itself (optimistic)",
            split,
        )
    thresholds = [
        choose_threshold(val_scores[:, j], val_labels[:, j], settings.threshold)
        for j in range(len(names))
    ]
    table = score_predictions(
        scores, labels, patients, names, settings.bootstrap_samples, settings.bootstrap_seed,
        settings.confidence, thresholds,
    )  # fmt: skip
    output_dir.mkdir(parents=True, exist_ok=True)
    calibration, fitted, calibration_line = write_calibration_report(
        scores, labels, names, output_dir, settings.calibration,
        val_scores if chosen_on == "val" else None, val_labels, split, settings.plots,
    )  # fmt: skip
    table[["ece", "brier"]] = calibration[["ece_equal_mass", "brier"]].reindex(table.index)
    if fitted is not None:
        calibrated = preds[[IMAGE]].copy()
        calibrated[prob_columns(names)] = fitted.apply(scores, names)
        calibrated.to_csv(output_dir / "preds_calibrated.csv", index=False)
    table.to_csv(output_dir / "aucs.csv")
    if settings.plots:
        plot_curves(scores, labels, names, output_dir, title=f"{split} split, {len(preds)} images")
    subgroups = write_subgroup_report(
        scores, labels, patients, truth.loc[preds[IMAGE]], names, thresholds,
        settings.subgroup_spec, output_dir,
        settings.bootstrap_samples, settings.bootstrap_seed, settings.confidence,
        table["auroc"].to_dict(), settings.plots, split,
    )  # fmt: skip
    log.info(
        "%s split: %d images of %d patients; thresholds (%s) chosen on %s\n%s\n%s%s",
        split, len(preds), len(set(patients)), settings.threshold, chosen_on,
        format_report(table.drop(columns=["ece", "brier"])), calibration_line,
        f"\n{format_summary(subgroups)}" if subgroups else "",
    )  # fmt: skip
    metrics = {
        f"{split}/auroc_{n}": float(table.at[n, "auroc"])
        for n in names
        if not np.isnan(table.at[n, "auroc"])
    }
    if not np.isnan(table.at[MEAN_ROW, "auroc"]):
        metrics[f"{split}/auroc"] = float(table.at[MEAN_ROW, "auroc"])
    return table, metrics


def predict_split(
    model: torch.nn.Module,
    datamodule,
    split: str,
    settings: EvaluationSettings,
    cache: PredictionCache | None = None,
) -> pd.DataFrame:
    """Predictions of ``split`` — from the cache when this checkpoint was evaluated so before."""
    datamodule.setup()
    expected = datamodule.datasets[split].table[IMAGE].tolist()
    key = {
        "tta": settings.tta,
        "precision": settings.precision,
        "image_size": datamodule.image_size,
        "images": len(expected),
    }
    if cache is not None and (stored := cache.load(split, key, expected)) is not None:
        return stored
    loader = datamodule.eval_dataloader(split, tta_resize(datamodule.image_size, settings.tta))
    preds = predict(
        model, loader, model.class_names, settings.tta, datamodule.image_size, settings.precision
    )
    if cache is not None:
        cache.save(split, key, preds)
    return preds


def evaluate_model(
    model: torch.nn.Module,
    datamodule,
    output_dir: str | Path,
    settings: EvaluationSettings,
    split: str = "test",
    checkpoint: str | Path | None = None,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Predict ``split`` (and validation, for thresholds), store both, score and report."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    datamodule.setup()
    if len(datamodule.datasets[split]) == 0:
        raise DataError(f"the {split} split has no images; nothing to evaluate")
    if list(model.class_names) != list(datamodule.pathologies):
        raise DataError(
            f"the model has {len(model.class_names)} outputs but the data has {len(datamodule.pathologies)} "
            "classes; set include_no_finding to what the model was trained with"
        )
    cache = PredictionCache(checkpoint) if checkpoint else None
    preds = predict_split(model, datamodule, split, settings, cache)
    preds.to_csv(output_dir / "preds.csv", index=False)
    val_preds = None
    if split != "val" and len(datamodule.datasets["val"]):
        val_preds = predict_split(model, datamodule, "val", settings, cache)
        val_preds.to_csv(output_dir / "preds_val.csv", index=False)
    truth = label_index(datamodule.table)
    result = score_and_write(
        preds, truth, model.class_names, output_dir, settings, split, val_preds
    )
    if cache is not None and settings.calibrate != "none":
        cache.store_file(output_dir / "calibration.json", f"calibration_{settings.calibrate}.json")
    return result


def log_to_wandb(run, table: pd.DataFrame, output_dir: Path, split: str) -> None:
    """The per-class table and the plots (curves, reliability, subgroups) into a W&B run."""
    import wandb

    payload = {f"{split}/aucs": wandb.Table(dataframe=table.reset_index())}
    for name in ("roc_curves", "pr_curves", "reliability", "subgroups_forest"):
        path = output_dir / f"{name}.png"
        if path.is_file():
            payload[f"{split}/{name}"] = wandb.Image(str(path))
    run.log(payload)
