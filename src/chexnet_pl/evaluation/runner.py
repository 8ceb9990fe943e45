"""One evaluation code path for ``train`` (after fitting) and ``evaluate`` (a checkpoint or a file)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from chexnet_pl.data.labelled_images import truth_frame
from chexnet_pl.data.nih_table import IMAGE, PATIENT
from chexnet_pl.errors import DataError
from chexnet_pl.evaluation.calibration.report import write_calibration_report
from chexnet_pl.evaluation.conformal import write_conformal
from chexnet_pl.evaluation.external import (
    add_combined,
    add_internal,
    combined_outputs,
    label_map_for,
    match_model_to_data,
    reference_for,
    truth_for,
)
from chexnet_pl.evaluation.plots import curve_figures, write_curves
from chexnet_pl.evaluation.predictions import (
    PredictionCache,
    predict,
    prob_columns,
    tta_resize,
)
from chexnet_pl.evaluation.provenance import ImageSources, image_sources, read_official_lists
from chexnet_pl.evaluation.report import (
    choose_threshold,
    format_report,
    score_predictions,
    threshold_status,
    whole_numbers,
)
from chexnet_pl.evaluation.settings import EvaluationSettings
from chexnet_pl.evaluation.stratified import pairs_for, score_stratified, write_stratified
from chexnet_pl.evaluation.subgroups import (
    NoFindingThreshold,
    Subgroups,
    has_subgroup_columns,
    score_subgroups,
    write_subgroup_report,
)
from chexnet_pl.evaluation.subgroups.summary import format_summary
from chexnet_pl.evaluation.thresholds import RULES, SPLITS
from chexnet_pl.files import write_csv_atomic
from chexnet_pl.label_sets import NO_FINDING, labelled, mean_row
from chexnet_pl.model_identity import of_checkpoint, of_model, paper_comparison

log = logging.getLogger(__name__)


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
    reference: tuple[Mapping[str, float], float] | None = None,
    internal: Mapping[str, float] | None = None,
    sources: ImageSources | None = None,
    source_label: str = "",
    model: str = "",
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Score a predictions table against ``truth`` (see ``truth_frame``); write aucs.csv and plots.
    ``reference``: the data's published AUROC per label and its mean (NIH: the CheXNet paper's);
    ``internal``: the model's AUROC on its own test split, beside the external one;
    ``sources``: where the images come from (the official lists), said in the report's header
    after ``source_label``; a "test" score of images outside the official test list gets no
    comparison with the paper's test AUROCs; ``model``: what the figures' titles call the model
    (its backbone; "" when not known)."""
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
        settings.confidence, thresholds, reference,
    )  # fmt: skip
    # How each threshold was chosen, and whether it gives a verdict (evaluation.thresholds).
    val_known = [labelled(val_labels[:, j]) for j in range(len(names))]
    table.loc[list(names), "threshold_rule"] = settings.threshold
    table.loc[list(names), "threshold_split"] = chosen_on
    table.loc[list(names), "threshold_positives"] = [
        int((val_labels[val_known[j], j] > 0.5).sum()) for j in range(len(names))
    ]
    table.loc[list(names), "threshold_status"] = [
        threshold_status(val_scores[:, j], val_labels[:, j], t, chosen_on)
        for j, t in enumerate(thresholds)
    ]
    flagged = [
        f"{n}: {s}" for n, s in table.loc[list(names), "threshold_status"].items() if s != "ok"
    ]
    if flagged:
        log.warning("operating thresholds without a clean verdict:\n  %s", "\n  ".join(flagged))
    if internal is not None:
        table = add_internal(table, internal)
    # What the figures and the calibration line call the images: a split, or what they are not.
    scope = f"{split} split"
    if sources is not None and sources.outside_split:
        scope = (
            f"images scored as {split} ({sources.outside_split} NOT in the official {split} list)"
        )
        if split == "test" and "paper_auroc" in table:
            table[["paper_auroc", "diff_vs_paper"]] = np.nan  # not the paper's test set
    output_dir.mkdir(parents=True, exist_ok=True)
    calibration, fitted, calibration_line = write_calibration_report(
        scores, labels, names, output_dir, settings.calibration,
        val_scores if chosen_on == "val" else None, val_labels, scope, settings.plots,
        model, settings.figure_format,
    )  # fmt: skip
    table[["ece", "brier"]] = calibration[["ece_equal_mass", "brier"]].reindex(table.index)
    if fitted is not None:
        calibrated = preds[[IMAGE]].copy()
        calibrated[prob_columns(names)] = fitted.apply(scores, names)
        write_csv_atomic(calibrated, output_dir / "preds_calibrated.csv", index=False)
    write_csv_atomic(whole_numbers(table), output_dir / "aucs.csv")
    conformal_line = write_conformal(
        settings.conformal_settings, val_scores if chosen_on == "val" else None, val_labels,
        scores, labels, patients, names, output_dir, settings.bootstrap_samples,
        settings.bootstrap_seed, settings.confidence,
    )  # fmt: skip
    if settings.plots:
        intervals = (
            {n: (table.at[n, "ci_low"], table.at[n, "ci_high"]) for n in names}
            if "ci_low" in table
            else None
        )
        figures = curve_figures(
            scores, labels, names, "", patients, settings.bootstrap_samples,
            settings.bootstrap_seed, settings.confidence, intervals, scope, model,
        )  # fmt: skip
        write_curves(figures, output_dir, settings.figure_format)
    spec = settings.subgroup_spec
    meta, subgroups = truth.loc[preds[IMAGE]], None
    if has_subgroup_columns(spec, meta):
        result = score_subgroups(
            scores, labels, patients, meta, names, thresholds, spec, settings.bootstrap_samples,
            settings.bootstrap_seed, settings.confidence,
            underdiagnosis_threshold(val_scores, val_labels, names, spec, chosen_on),
        )  # fmt: skip
        subgroups = write_subgroup_report(
            result, output_dir, table["auroc"].to_dict(), settings.plots, scope,
            settings.confidence, model, settings.figure_format, len(preds),
        )  # fmt: skip
    audit_stratified(scores, labels, patients, truth, preds, names, output_dir, settings, scope,
                     model)  # fmt: skip
    log.info(
        "%s split: %s; %d patients; thresholds: %s on %s (positives per class: aucs.csv's "
        "threshold_positives)\n%s\n%s%s%s",
        split, ", ".join(filter(None, [source_label, sources.header if sources else f"{len(preds)} images"])),
        len(set(patients)), RULES.get(settings.threshold, settings.threshold),
        SPLITS.get(chosen_on, chosen_on), format_report(table.drop(columns=["ece", "brier"])), calibration_line,
        f"\n{format_summary(subgroups)}" if subgroups else "",
        f"\n{conformal_line}" if conformal_line else "",
    )  # fmt: skip
    metrics = {
        f"{split}/auroc_{n}": float(table.at[n, "auroc"])
        for n in names
        if not np.isnan(table.at[n, "auroc"])
    }
    if not np.isnan(table.at[mean_row(names), "auroc"]):
        metrics[f"{split}/auroc"] = float(table.at[mean_row(names), "auroc"])
    return table, metrics


def audit_stratified(
    scores: np.ndarray,
    labels: np.ndarray,
    patients: np.ndarray,
    truth: pd.DataFrame,
    preds: pd.DataFrame,
    names: Sequence[str],
    output_dir: Path,
    settings: EvaluationSettings,
    scope: str,
    model: str,
) -> pd.DataFrame | None:
    """The shortcut audit (``evaluation.stratify``): ``stratified.csv`` and its figure, or None
    when there is no pair to audit."""
    meta = truth.loc[preds[IMAGE]]
    columns = [c for c in [*truth.attrs.get("labels", []), *names] if c in truth.columns]
    meta.attrs = {**truth.attrs, "labels": list(dict.fromkeys(columns))}  # label covariates
    pairs = pairs_for(settings.stratify, meta, names)
    if not pairs:
        return None
    table = score_stratified(
        scores, labels, patients, meta, names, pairs, settings.subgroup_spec,
        settings.bootstrap_samples, settings.bootstrap_seed, settings.confidence,
    )  # fmt: skip
    write_stratified(table, output_dir, settings.plots, scope, settings.confidence, model,
                     settings.figure_format, len(preds))  # fmt: skip
    return table


def underdiagnosis_threshold(
    val_scores: np.ndarray,
    val_labels: np.ndarray,
    names: Sequence[str],
    spec: Subgroups,
    chosen_on: str,
) -> NoFindingThreshold | None:
    """The "No Finding" threshold underdiagnosis is measured at: ``spec.underdiagnosis_threshold``
    (``f1``, the paper's, or ``youden``) on the validation predictions."""
    if NO_FINDING not in names:
        return None
    j = list(names).index(NO_FINDING)
    rule = spec.underdiagnosis_threshold
    value = choose_threshold(val_scores[:, j], val_labels[:, j], rule)
    if rule == "f1":
        how = (f"F1-maximising on {chosen_on}, as Seyyed-Kalantari et al. 2021; "
               "evaluation.underdiagnosis_threshold=youden for Youden's J")  # fmt: skip
    else:
        how = (f"Youden's J on {chosen_on}; evaluation.underdiagnosis_threshold=f1 for the "
               "paper's F1-maximising threshold")  # fmt: skip
    return NoFindingThreshold(value, how)


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
    internal: Mapping[str, float] | None = None,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Predict ``split`` (and validation, for thresholds), store both, score and report. The
    model's outputs are scored against the data's labels they match (``settings.label_map``):
    all of them on the data it was trained on, the shared ones on another dataset (external
    validation; ``internal``: the model's own test AUROC per output, shown beside)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    datamodule.setup()
    if len(datamodule.datasets[split]) == 0:
        raise DataError(f"the {split} split has no images; nothing to evaluate")
    combined = combined_outputs(
        model.class_names, datamodule.pathologies, getattr(datamodule, "label_from_outputs", None)
    )  # a label scored against the maximum of several outputs (RSNA's Lung Opacity)
    outputs = [*model.class_names, *combined]
    match = match_model_to_data(
        outputs,
        datamodule.pathologies,
        label_map_for(settings.label_map, datamodule),
        settings.label_map_shared,
    )
    log.info("%s", match.describe())  # the outputs this run reports, before any prediction
    identity = of_checkpoint(model, checkpoint) if checkpoint else of_model(model)
    identity.write(output_dir)  # beside aucs.csv: which model these scores are of
    log.info("model: %s", identity.line())
    reference = reference_for(datamodule.reference_auroc, match)
    why_not = paper_comparison(identity.backbone, reference) if reference else None
    if why_not:
        log.info("%s", why_not)
        reference = None
    cache = PredictionCache(checkpoint) if checkpoint else None
    preds = add_combined(predict_split(model, datamodule, split, settings, cache), combined)
    write_csv_atomic(preds, output_dir / "preds.csv", index=False)
    val_preds = None
    if split != "val" and len(datamodule.datasets["val"]):
        val_preds = add_combined(predict_split(model, datamodule, "val", settings, cache), combined)
        write_csv_atomic(val_preds, output_dir / "preds_val.csv", index=False)
    truth = truth_for(
        truth_frame(datamodule.table, datamodule.labels, datamodule.pathologies), match
    )
    method = getattr(datamodule, "split_args", {}).get("method", "official")
    sources = image_sources(
        preds[IMAGE].tolist(), read_official_lists(getattr(datamodule, "root", None)), split,
        getattr(datamodule, "root", None), official=method == "official",
    )  # fmt: skip
    result = score_and_write(
        preds, truth, match.scored, output_dir, settings, split, val_preds,
        reference, None if match.internal else internal,
        sources, f"data.split.method={method}", model_name(model),
    )  # fmt: skip
    if cache is not None and settings.calibrate != "none":
        cache.store_file(output_dir / "calibration.json", f"calibration_{settings.calibrate}.json")
    return result


def model_name(model: torch.nn.Module) -> str:
    """What figures call a model: its backbone (``model.backbone``), "" when it has none."""
    hparams = getattr(model, "hparams", None) or {}
    return str(hparams.get("backbone") or "")


def log_to_wandb(run, table: pd.DataFrame, output_dir: Path, split: str) -> None:
    """The per-class table and the plots (curves, reliability, subgroups; PNG only: W&B shows
    no PDF or SVG) into a W&B run."""
    import wandb

    payload = {f"{split}/aucs": wandb.Table(dataframe=table.reset_index())}
    for name in ("roc_curves", "pr_curves", "reliability", "subgroups_forest"):
        path = output_dir / f"{name}.png"
        if path.is_file():
            payload[f"{split}/{name}"] = wandb.Image(str(path))
    run.log(payload)
