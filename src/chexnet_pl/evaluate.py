"""Evaluate a checkpoint, or score a predictions file, against a dataset's labels: per-class
AUROC with patient-bootstrap CIs, operating points, subgroups, calibration, a paired comparison
of two models, radiologists' labels beside NIH's, and external validation on another dataset.
The data and split come from the checkpoint unless data=<dataset> says otherwise.

  chexnet-evaluate ckpt=outputs/train/2026-12-01/09-30-00/checkpoints/best.ckpt
  chexnet-evaluate preds=preds.csv val_preds=preds_val.csv data.root=/data/nih
  chexnet-evaluate ckpt=outputs/train/2026-12-01/09-30-00/checkpoints/best.ckpt data=chexpert data.root=/data/chexpert
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig, OmegaConf

from chexnet_pl.command_runner import CONFIG_PATH, log_outputs, run_command, run_or_exit
from chexnet_pl.validation import Problems

if TYPE_CHECKING:
    import pandas as pd

    from chexnet_pl.checkpoints import Run
    from chexnet_pl.data.datamodule import ChestXrayDataModule
    from chexnet_pl.evaluation.settings import EvaluationSettings

log = logging.getLogger(__name__)
COMPARE_ON = ("same", "intersection")
TARGET = "_target_"


@dataclass(frozen=True)
class EvaluateSettings:
    """conf/evaluate.yaml (``evaluation.*`` aside), judged before any checkpoint, predictions
    file or image is read. ``data.*`` given here replace the checkpoint's data settings; with
    ``data=<dataset>`` (a ``_target_``), that dataset is scored instead (external validation)."""

    ckpt: str | None
    preds: str | None
    val_preds: str | None
    split: str
    official_test_only: bool
    compare: str | None
    compare_ckpt: str | None
    compare_on: str
    expert_labels: str | None
    expert_map: Mapping[str, Any]
    internal_aucs: str | None
    data: Mapping[str, Any]
    wandb: bool
    wandb_project: str

    def __post_init__(self) -> None:
        from chexnet_pl.data.splits import SPLITS

        problems = Problems()
        if (self.ckpt is None) == (self.preds is None):
            problems.add("give exactly one of ckpt=path/to/best.ckpt or preds=path/to/preds.csv")
        for key in ("ckpt", "preds", "val_preds", "compare", "compare_ckpt", "expert_labels",
                    "internal_aucs"):  # fmt: skip
            problems.path(key, getattr(self, key))
        if self.compare and self.compare_ckpt:
            problems.add("give one of compare=b.csv or compare_ckpt=b.ckpt, not both")
        problems.choice("split", self.split, SPLITS)
        problems.choice("compare_on", self.compare_on, COMPARE_ON)
        problems.flag("official_test_only", self.official_test_only)
        if self.official_test_only and not self.preds:
            problems.add(
                "official_test_only=true applies to preds=; with ckpt= the split comes from the "
                "checkpoint (data.split.method=official: its test split is the official test list)"
            )
        problems.flag("wandb", self.wandb)
        problems.text("wandb_project", self.wandb_project)
        if self.preds is not None and not self.data.get("root") and not self.data.get("csv"):
            problems.add(
                "preds= needs the labels: give data.root=/path/to/nih (or data.csv=), or "
                "data=<dataset> data.root=... for another dataset"
            )
        if self.data.get(TARGET) and not self.data.get("root"):
            problems.add(
                f"scoring on another dataset ({str(self.data[TARGET]).rsplit('.', 1)[-1]}) "
                "needs its folder: give data.root=/path/to/it"
            )
        self._check_data(problems)
        problems.raise_if_any()

    def _check_data(self, problems: Problems) -> None:
        """The NIH ``data.*`` given, judged by the data module's own check (the checkpoint's
        settings, read later, fill the rest). A ``data=<dataset>`` config is judged by its
        module when it is built, before any image is read."""
        from chexnet_pl.config_defaults import shipped
        from chexnet_pl.data.settings import check_data_settings
        from chexnet_pl.errors import ConfigError

        if self.data.get(TARGET):
            return
        given = {k: v for k, v in self.data.items() if v is not None}
        known = shipped("data", root=".")
        nested = Problems("data")
        for key in nested.unknown_keys(given, known):
            del given[key]
        problems.messages += nested.messages
        try:
            check_data_settings({**known, **given}, source="root" in given)
        except ConfigError as exc:
            problems.extend(exc)


def check_config(cfg: DictConfig) -> EvaluateSettings:
    from chexnet_pl.evaluation.expert_labels import ExpertMap
    from chexnet_pl.evaluation.settings import EvaluationSettings
    from chexnet_pl.settings import command_settings, dry_run, resolved

    values = resolved(cfg)
    problems = Problems()
    settings = dry_run(
        problems, lambda: command_settings(EvaluateSettings, {k: v for k, v in values.items()
                                                               if k != "evaluation"})
    )  # fmt: skip
    evaluation = dry_run(problems, lambda: EvaluationSettings.from_config(values["evaluation"]))
    if settings and settings.expert_labels:
        dry_run(problems, lambda: ExpertMap.from_config(settings.expert_map))
    if settings and evaluation and evaluation.calibrate != "none":
        if settings.preds and not settings.val_preds:
            problems.add(
                f"evaluation.calibrate={evaluation.calibrate} is fitted on validation "
                "predictions: give val_preds=preds_val.csv with preds="
            )
    problems.raise_if_any()
    return settings


def compare_with(
    cfg: DictConfig,
    preds_a: pd.DataFrame,
    names_a: list[str],
    truth: pd.DataFrame,
    settings: EvaluationSettings,
    datamodule: ChestXrayDataModule | None,
) -> dict[str, float]:
    """``compare=b.csv`` or ``compare_ckpt=b.ckpt``: ΔAUROC of A (``preds=``/``ckpt=``) − B on
    the images both have; writes compare.csv and compare.png."""
    import pandas as pd

    from chexnet_pl.checkpoints import datamodule_for, load_run
    from chexnet_pl.data.build import build_datamodule
    from chexnet_pl.evaluation.compare import write_comparison
    from chexnet_pl.evaluation.predictions import PredictionCache, read_predictions
    from chexnet_pl.evaluation.runner import predict_split
    from chexnet_pl.files import write_csv_atomic

    output_dir = Path(cfg.paths.output_dir)
    if cfg.get("compare"):
        preds_b, names_b = read_predictions(cfg.compare, truth.index)
        label_b = str(cfg.compare)
    else:
        other = load_run(cfg.compare_ckpt)
        if datamodule is not None:  # A's data and split, at the size B was trained at
            datamodule = build_datamodule({**datamodule.hparams, "image_size": other.image_size})
        else:
            datamodule = datamodule_for(other, cfg.data, output_dir)
        preds_b = predict_split(
            other.model, datamodule, cfg.split, settings, PredictionCache(other.path)
        )
        write_csv_atomic(preds_b, output_dir / "preds_compare.csv", index=False)
        names_b, label_b = list(other.model.class_names), str(other.path)
    names = [n for n in names_a if n in names_b]
    label_a = str(cfg.preds or cfg.ckpt)
    table = write_comparison(
        preds_a, preds_b, truth, names, output_dir, label_a, label_b, cfg.compare_on,
        settings.bootstrap_samples, settings.bootstrap_seed, settings.confidence, settings.plots,
    )  # fmt: skip
    return {
        f"{cfg.split}/delta_auroc_{n}": float(v) for n, v in table["delta"].items() if pd.notna(v)
    }


# The files a researcher opens first, named in the command's last line (those written).
EVALUATE_FILES = ("aucs.csv", "model.json", "preds.csv", "preds_val.csv", "roc_curves.png",
                  "pr_curves.png", "calibration.csv", "subgroups.csv")  # fmt: skip


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Run the evaluation ``cfg`` describes; returns ``<split>/auroc`` and per-class metrics."""
    import pandas as pd

    from chexnet_pl.checkpoints import datamodule_for, load_run
    from chexnet_pl.data.labelled import truth_frame
    from chexnet_pl.data.nih_table import IMAGE
    from chexnet_pl.evaluation.expert import ExpertLabels, log_expert_to_wandb
    from chexnet_pl.evaluation.external import label_map_for, match_model_to_data, truth_for
    from chexnet_pl.evaluation.provenance import (
        image_sources,
        keep_official_test,
        read_official_lists,
    )
    from chexnet_pl.evaluation.runner import (
        evaluate_model,
        log_to_wandb,
        score_and_write,
    )
    from chexnet_pl.evaluation.settings import EvaluationSettings

    check_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    settings = EvaluationSettings.from_config(cfg.evaluation)
    split = cfg.split
    expert = (  # read and checked before any model runs
        ExpertLabels.from_config(cfg.expert_labels, cfg.expert_map)
        if cfg.get("expert_labels")
        else None
    )
    expert_table = None
    data = OmegaConf.to_container(cfg.data, resolve=True)
    if cfg.ckpt:
        run = load_run(cfg.ckpt)
        if expert is not None:
            expert.check_outputs(run.model.class_names, f"the checkpoint {run.path}")
        datamodule = datamodule_for(run, data, output_dir)
        internal = _internal_aucs(cfg, run) if data.get(TARGET) else None
        table, metrics = evaluate_model(
            run.model, datamodule, output_dir, settings, split, run.path, internal
        )
        labelled = truth_frame(datamodule.table, datamodule.labels, datamodule.pathologies)
        if cfg.get("compare") or cfg.get("compare_ckpt"):
            preds = pd.read_csv(output_dir / "preds.csv", dtype={IMAGE: str})
            match = match_model_to_data(
                run.model.class_names, datamodule.pathologies,
                label_map_for(settings.label_map, datamodule), settings.label_map_shared,
            )  # fmt: skip
            truth = truth_for(labelled, match)
            metrics |= compare_with(cfg, preds, match.scored, truth, settings, datamodule)
        if expert is not None:  # the split evaluated, and validation when it was predicted too
            stored = [
                output_dir / n for n in ("preds.csv", "preds_val.csv")[: 1 + (split != "val")]
            ]
            preds = [pd.read_csv(p, dtype={IMAGE: str}) for p in stored if p.is_file()]
            splits = datamodule.table.set_index(IMAGE)["split"]
            expert_table, expert_metrics = expert.score_and_write(
                preds, labelled, output_dir, settings, splits
            )
            metrics |= expert_metrics
    else:
        truth, reference = _truth_of(data)
        preds, names = _predictions_for(cfg.preds, truth)
        if expert is not None:
            expert.check_outputs(names, f"the predictions file {cfg.preds}")
        lists_folder = (
            Path(data["root"])
            if data.get("root")
            else Path(data["csv"]).parent
            if data.get("csv")
            else None
        )
        lists = read_official_lists(lists_folder)
        if cfg.get("official_test_only"):
            preds = preds[keep_official_test(preds[IMAGE].tolist(), lists, str(lists_folder))]
            preds = preds.reset_index(drop=True)
        sources = image_sources(preds[IMAGE].tolist(), lists, split, lists_folder)
        val_preds = _predictions_for(cfg.val_preds, truth)[0] if cfg.get("val_preds") else None
        table, metrics = score_and_write(
            preds, truth, names, output_dir, settings, split, val_preds, reference, None,
            sources, Path(cfg.preds).name,
        )  # fmt: skip
        if cfg.get("compare") or cfg.get("compare_ckpt"):
            metrics |= compare_with(cfg, preds, names, truth, settings, None)
        if expert is not None:
            expert_table, expert_metrics = expert.score_and_write(
                [preds, val_preds], truth, output_dir, settings
            )
            metrics |= expert_metrics
    if cfg.get("wandb"):
        import wandb

        wandb_run = wandb.init(
            project=cfg.wandb_project, dir=str(output_dir), job_type="evaluate",
            config=OmegaConf.to_container(cfg, resolve=True),
        )  # fmt: skip
        log_to_wandb(wandb_run, table, output_dir, split)
        if expert_table is not None:
            log_expert_to_wandb(wandb_run, expert_table)
        wandb_run.summary.update(metrics)
        wandb_run.finish()
    log_outputs(output_dir, EVALUATE_FILES)
    return metrics


def _internal_aucs(cfg: DictConfig, run: Run) -> dict[str, float] | None:
    """The model's AUROC on its own test split, beside external scores: ``internal_aucs=``, else
    the ``aucs.csv`` its training run wrote (``<run>/aucs.csv``) when there is one."""
    from chexnet_pl.errors import DataError
    from chexnet_pl.evaluation.external import read_internal_aucs

    path = cfg.get("internal_aucs") or run.path.resolve().parent.parent / "aucs.csv"
    if not Path(path).is_file():
        if cfg.get("internal_aucs"):
            raise DataError(f"internal_aucs={path} is not a file")
        log.warning(
            "no internal AUROC to show beside the external one: %s is not there (train with "
            "test=true, or give internal_aucs=<the aucs.csv of its own evaluation>)", path,
        )  # fmt: skip
        return None
    return read_internal_aucs(path, run.model.class_names)


def _predictions_for(path: str, truth: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
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


def _truth_of(data: dict) -> tuple[pd.DataFrame, tuple | None]:
    """The labels ``preds=`` is scored against, and the data's reference AUROC: NIH's metadata
    CSV (``data.root``/``data.csv``), or with ``data=<dataset>`` that dataset's tables."""
    from chexnet_pl.data.build import build_datamodule
    from chexnet_pl.data.labelled import truth_frame
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


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="evaluate")
def hydra_main(cfg: DictConfig) -> float | None:
    metrics = run_or_exit(evaluate, cfg)
    return metrics.get(f"{cfg.split}/auroc")


def main() -> None:
    run_command("evaluate", hydra_main, check=check_config, doc=__doc__)


if __name__ == "__main__":
    main()
