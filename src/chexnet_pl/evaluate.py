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
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from chexnet_pl.command_runner import CONFIG_PATH, log_outputs, run_command, run_or_exit
from chexnet_pl.validation import Problems

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
    from chexnet_pl.evaluation.expert.labels import ExpertMap
    from chexnet_pl.evaluation.settings import EvaluationSettings
    from chexnet_pl.ood import OodSettings
    from chexnet_pl.settings import command_settings, dry_run, resolved

    values = resolved(cfg)
    problems = Problems()
    settings = dry_run(
        problems, lambda: command_settings(EvaluateSettings, {k: v for k, v in values.items()
                                                               if k not in ("evaluation", "ood")})
    )  # fmt: skip
    evaluation = dry_run(problems, lambda: EvaluationSettings.from_config(values["evaluation"]))
    ood = dry_run(problems, lambda: OodSettings.from_config(values.get("ood")))
    if settings and ood and ood.fit and not settings.ckpt:
        problems.add("ood.fit=true fits the OOD flag of a checkpoint: give ckpt=")
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


# The files a researcher opens first, named in the command's last line (those written).
EVALUATE_FILES = ("aucs.csv", "model.json", "preds.csv", "preds_val.csv", "roc_curves.png",
                  "pr_curves.png", "calibration.csv", "subgroups.csv", "stratified.csv",
                  "ood.csv")  # fmt: skip


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Run the evaluation ``cfg`` describes (``evaluation.pipeline``); returns
    ``<split>/auroc`` and per-class metrics."""
    from chexnet_pl.evaluation.expert import ExpertLabels
    from chexnet_pl.evaluation.pipeline import (
        evaluate_checkpoint,
        evaluate_predictions,
        log_evaluation,
    )
    from chexnet_pl.evaluation.settings import EvaluationSettings
    from chexnet_pl.ood import OodSettings

    check_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    settings = EvaluationSettings.from_config(cfg.evaluation)
    expert = (  # read and checked before any model runs
        ExpertLabels.from_config(cfg.expert_labels, cfg.expert_map)
        if cfg.get("expert_labels")
        else None
    )
    data = OmegaConf.to_container(cfg.data, resolve=True)
    compare = {"compare": cfg.get("compare"), "compare_ckpt": cfg.get("compare_ckpt"),
               "compare_on": cfg.compare_on, "expert": expert}  # fmt: skip
    if cfg.ckpt:
        table, metrics, expert_table = evaluate_checkpoint(
            cfg.ckpt, data, output_dir, settings, cfg.split,
            internal_aucs=cfg.get("internal_aucs"), ood=OodSettings.from_config(cfg.get("ood")),
            **compare,
        )  # fmt: skip
    else:
        table, metrics, expert_table = evaluate_predictions(
            cfg.preds, data, output_dir, settings, cfg.split, val_preds=cfg.get("val_preds"),
            official_test_only=bool(cfg.get("official_test_only")), **compare,
        )  # fmt: skip
    if cfg.get("wandb"):
        config = OmegaConf.to_container(cfg, resolve=True)
        log_evaluation(cfg.wandb_project, output_dir, config, table, metrics, cfg.split,
                       expert_table)  # fmt: skip
    log_outputs(output_dir, EVALUATE_FILES)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="evaluate")
def hydra_main(cfg: DictConfig) -> float | None:
    metrics = run_or_exit(evaluate, cfg)
    return metrics.get(f"{cfg.split}/auroc")


def main() -> None:
    run_command("evaluate", hydra_main, check=check_config, doc=__doc__)


if __name__ == "__main__":
    main()
