"""An evaluation from start to end, as ``chexnet-evaluate`` runs it: a checkpoint
(``evaluate_checkpoint``) or a predictions file (``evaluate_predictions``) scored against a
dataset's labels, with a paired comparison to a second model (``compare_with``), radiologists'
labels beside the dataset's (``evaluation.expert``), and the run logged to W&B (``log_evaluation``).
Every argument is a plain value: the command composes its config and calls these."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from chexnet_pl.checkpoints.runs import Run
    from chexnet_pl.data.datamodule import ChestXrayDataModule
    from chexnet_pl.evaluation.expert import ExpertLabels
    from chexnet_pl.evaluation.settings import EvaluationSettings
    from chexnet_pl.models.ood import OodSettings

log = logging.getLogger(__name__)
TARGET = "_target_"

# (the scores table, the metrics, the expert-labels table or None)
Outcome = tuple["pd.DataFrame", dict[str, float], "pd.DataFrame | None"]


def evaluate_checkpoint(
    ckpt: str | Path,
    data: Mapping[str, Any],
    output_dir: str | Path,
    settings: EvaluationSettings,
    split: str = "test",
    *,
    compare: str | Path | None = None,
    compare_ckpt: str | Path | None = None,
    compare_on: str = "same",
    expert: ExpertLabels | None = None,
    internal_aucs: str | Path | None = None,
    ood: OodSettings | None = None,
) -> Outcome:
    """Predict ``split`` with the checkpoint's model and score it; ``data`` replaces the
    checkpoint's data settings (with a ``_target_``: another dataset, external validation).
    ``ood.fit``: the OOD flag is fitted first, into a NEW checkpoint ``<stem>.ood.ckpt`` beside
    ``ckpt``, which is the one evaluated; a model with a flag has its flag rates reported."""
    import pandas as pd

    from chexnet_pl.checkpoints.runs import datamodule_for, load_run
    from chexnet_pl.data.labelled_images import truth_frame
    from chexnet_pl.data.nih_table import IMAGE
    from chexnet_pl.evaluation.external import label_map_for, match_model_to_data, truth_for
    from chexnet_pl.evaluation.runner import evaluate_model
    from chexnet_pl.ood import fit_checkpoint, report_flag_rates

    output_dir = Path(output_dir)
    data = dict(data)
    if ood is not None and ood.fit:
        ckpt = fit_checkpoint(ckpt, None, ood.max_images, ood.false_alarm_rate, data, output_dir)
    run = load_run(ckpt)
    if expert is not None:
        expert.check_outputs(run.model.class_names, f"the checkpoint {run.path}")
    datamodule = datamodule_for(run, data, output_dir)
    internal = internal_aucs_of(run, internal_aucs) if data.get(TARGET) else None
    table, metrics = evaluate_model(
        run.model, datamodule, output_dir, settings, split, run.path, internal
    )
    metrics |= report_flag_rates(
        run.ood, run.model, datamodule, [split, "val"], output_dir, run.path
    )
    labelled = truth_frame(datamodule.table, datamodule.labels, datamodule.pathologies)
    if compare or compare_ckpt:
        preds = pd.read_csv(output_dir / "preds.csv", dtype={IMAGE: str})
        match = match_model_to_data(
            run.model.class_names, datamodule.pathologies,
            label_map_for(settings.label_map, datamodule), settings.label_map_shared,
        )  # fmt: skip
        truth = truth_for(labelled, match)
        metrics |= compare_with(
            output_dir, split, preds, match.scored, str(ckpt), truth, settings, data,
            datamodule, compare=compare, compare_ckpt=compare_ckpt, compare_on=compare_on,
        )  # fmt: skip
    expert_table = None
    if expert is not None:  # the split evaluated, and validation when it was predicted too
        stored = [output_dir / n for n in ("preds.csv", "preds_val.csv")[: 1 + (split != "val")]]
        preds = [pd.read_csv(p, dtype={IMAGE: str}) for p in stored if p.is_file()]
        splits = datamodule.table.set_index(IMAGE)["split"]
        expert_table, expert_metrics = expert.score_and_write(
            preds, labelled, output_dir, settings, splits
        )
        metrics |= expert_metrics
    return table, metrics, expert_table


def evaluate_predictions(
    preds: str | Path,
    data: Mapping[str, Any],
    output_dir: str | Path,
    settings: EvaluationSettings,
    split: str = "test",
    *,
    val_preds: str | Path | None = None,
    official_test_only: bool = False,
    compare: str | Path | None = None,
    compare_ckpt: str | Path | None = None,
    compare_on: str = "same",
    expert: ExpertLabels | None = None,
) -> Outcome:
    """Score a predictions CSV against the labels ``data`` names (NIH's ``root``/``csv``, or a
    dataset's ``_target_`` and ``root``); ``val_preds`` choose the operating thresholds."""
    from chexnet_pl.data.nih_table import IMAGE
    from chexnet_pl.evaluation.provenance import (
        image_sources,
        keep_official_test,
        read_official_lists,
    )
    from chexnet_pl.evaluation.runner import score_and_write

    output_dir = Path(output_dir)
    data = dict(data)
    truth, reference = truth_of(data)
    predictions, names = predictions_for(preds, truth)
    if expert is not None:
        expert.check_outputs(names, f"the predictions file {preds}")
    lists_folder = (
        Path(data["root"])
        if data.get("root")
        else Path(data["csv"]).parent
        if data.get("csv")
        else None
    )
    lists = read_official_lists(lists_folder)
    if official_test_only:
        keep = keep_official_test(predictions[IMAGE].tolist(), lists, str(lists_folder))
        predictions = predictions[keep].reset_index(drop=True)
    sources = image_sources(predictions[IMAGE].tolist(), lists, split, lists_folder)
    val = predictions_for(val_preds, truth)[0] if val_preds else None
    table, metrics = score_and_write(
        predictions, truth, names, output_dir, settings, split, val, reference, None,
        sources, Path(preds).name,
    )  # fmt: skip
    if compare or compare_ckpt:
        metrics |= compare_with(
            output_dir, split, predictions, names, str(preds), truth, settings, data, None,
            compare=compare, compare_ckpt=compare_ckpt, compare_on=compare_on,
        )  # fmt: skip
    expert_table = None
    if expert is not None:
        expert_table, expert_metrics = expert.score_and_write(
            [predictions, val], truth, output_dir, settings
        )
        metrics |= expert_metrics
    return table, metrics, expert_table


def compare_with(
    output_dir: str | Path,
    split: str,
    preds_a: pd.DataFrame,
    names_a: list[str],
    label_a: str,
    truth: pd.DataFrame,
    settings: EvaluationSettings,
    data: Mapping[str, Any],
    datamodule: ChestXrayDataModule | None,
    *,
    compare: str | Path | None = None,
    compare_ckpt: str | Path | None = None,
    compare_on: str = "same",
) -> dict[str, float]:
    """``compare=b.csv`` or ``compare_ckpt=b.ckpt``: ΔAUROC of A (``preds_a``, named
    ``label_a``) − B on the images both have; writes compare.csv and compare.png. B's
    checkpoint predicts A's data and split (``datamodule``), else the data ``data`` names."""
    import pandas as pd

    from chexnet_pl.checkpoints.runs import datamodule_for, load_run
    from chexnet_pl.data.build import build_datamodule
    from chexnet_pl.evaluation.compare import write_comparison
    from chexnet_pl.evaluation.predictions import PredictionCache, read_predictions
    from chexnet_pl.evaluation.runner import predict_split
    from chexnet_pl.files import write_csv_atomic

    output_dir = Path(output_dir)
    if compare:
        preds_b, names_b = read_predictions(compare, truth.index)
        label_b = str(compare)
    else:
        other = load_run(compare_ckpt)
        if datamodule is not None:  # A's data and split, at the size B was trained at
            datamodule = build_datamodule({**datamodule.hparams, "image_size": other.image_size})
        else:
            datamodule = datamodule_for(other, data, output_dir)
        preds_b = predict_split(
            other.model, datamodule, split, settings, PredictionCache(other.path)
        )
        write_csv_atomic(preds_b, output_dir / "preds_compare.csv", index=False)
        names_b, label_b = list(other.model.class_names), str(other.path)
    names = [n for n in names_a if n in names_b]
    table = write_comparison(
        preds_a, preds_b, truth, names, output_dir, label_a, label_b, compare_on,
        settings.bootstrap_samples, settings.bootstrap_seed, settings.confidence, settings.plots,
    )  # fmt: skip
    return {f"{split}/delta_auroc_{n}": float(v) for n, v in table["delta"].items() if pd.notna(v)}


def log_evaluation(
    project: str,
    output_dir: str | Path,
    config: Mapping[str, Any],
    table: pd.DataFrame,
    metrics: Mapping[str, float],
    split: str,
    expert_table: pd.DataFrame | None = None,
) -> None:
    """One W&B run (``job_type=evaluate``) with the scores table, the figures, the expert
    table when there is one, and ``metrics`` as its summary."""
    import wandb

    from chexnet_pl.evaluation.expert import log_expert_to_wandb
    from chexnet_pl.evaluation.runner import log_to_wandb

    wandb_run = wandb.init(
        project=project, dir=str(output_dir), job_type="evaluate", config=dict(config)
    )
    log_to_wandb(wandb_run, table, Path(output_dir), split)
    if expert_table is not None:
        log_expert_to_wandb(wandb_run, expert_table)
    wandb_run.summary.update(dict(metrics))
    wandb_run.finish()


def internal_aucs_of(run: Run, given: str | Path | None = None) -> dict[str, float] | None:
    """The model's AUROC on its own test split, beside external scores: ``given`` (an
    ``aucs.csv``), else the ``aucs.csv`` its training run wrote (``<run>/aucs.csv``) when
    there is one."""
    from chexnet_pl.errors import DataError
    from chexnet_pl.evaluation.external import read_internal_aucs

    path = given or run.path.resolve().parent.parent / "aucs.csv"
    if not Path(path).is_file():
        if given:
            raise DataError(f"internal_aucs={path} is not a file")
        log.warning(
            "no internal AUROC to show beside the external one: %s is not there (train with "
            "test=true, or give internal_aucs=<the aucs.csv of its own evaluation>)", path,
        )  # fmt: skip
        return None
    return read_internal_aucs(path, run.model.class_names)


def predictions_for(path: str | Path, truth: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """A predictions file scored against ``truth``'s labels, with the labels a dataset scores
    against the maximum of several outputs (``label_from_outputs``: RSNA's Lung Opacity) added
    from the file's columns of those outputs when it has no column of the label's own."""
    import pandas as pd

    from chexnet_pl.evaluation.external import add_combined, combined_outputs
    from chexnet_pl.evaluation.predictions import PROB, read_predictions

    labels = truth.attrs["labels"]
    rule = truth.attrs.get("label_from_outputs")
    if rule and Path(path).is_file():
        header = [str(c).strip() for c in pd.read_csv(path, nrows=0).columns]
        outputs = [c[len(PROB) :] for c in header if c.startswith(PROB)]
        if combined := combined_outputs(outputs, labels, rule):
            preds, _ = read_predictions(path, truth.index)
            preds = add_combined(preds, combined)
            return preds, [name for name in labels if PROB + name in preds.columns]
    return read_predictions(path, truth.index, labels)


def truth_of(data: Mapping[str, Any]) -> tuple[pd.DataFrame, tuple | None]:
    """The labels a predictions file is scored against, and the data's reference AUROC: NIH's
    metadata CSV (``data["root"]``/``data["csv"]``), or with a ``_target_`` that dataset's
    tables."""
    from chexnet_pl.data.build import build_datamodule
    from chexnet_pl.data.labelled_images import truth_frame
    from chexnet_pl.data.nih import NIHDataModule, label_index
    from chexnet_pl.data.nih_table import find_data_entry, read_data_entry
    from chexnet_pl.errors import DataError

    if data.get(TARGET):
        settings = {k: v for k, v in data.items() if v is not None}  # no images are loaded
        datamodule = build_datamodule({**settings, "report_dir": None})
        images = datamodule.read_labels()
        truth = truth_frame(images.table, images.labels, datamodule.pathologies)
        truth.attrs["label_from_outputs"] = getattr(datamodule, "label_from_outputs", None)
        return truth, datamodule.reference_auroc
    if not data.get("root") and not data.get("csv"):
        raise DataError(
            "preds= needs the labels: give data.root=/path/to/nih (or data.csv=), or "
            "data=<dataset> data.root=... for another dataset"
        )
    csv = Path(data["csv"]) if data.get("csv") else find_data_entry(data["root"])
    return label_index(read_data_entry(csv)), NIHDataModule.reference_auroc
