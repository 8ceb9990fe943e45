"""Evaluate a checkpoint, or score a predictions file, against the NIH labels: per-class AUROC
with patient-bootstrap CIs, operating points, subgroups, calibration, and a paired comparison of
two models. The data and split come from the checkpoint.

  chexnet-evaluate ckpt=outputs/train/2026-12-01/09-30-00/checkpoints/best.ckpt
  chexnet-evaluate preds=preds.csv val_preds=preds_val.csv data.root=/data/nih
  chexnet-evaluate preds=mine.csv compare=theirs.csv data.root=/data/nih
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig, OmegaConf

from chexnet_pl.cli import CONFIG_PATH, run_command, run_or_exit
from chexnet_pl.validation import Problems

if TYPE_CHECKING:
    import pandas as pd

    from chexnet_pl.data.datamodule import NIHDataModule
    from chexnet_pl.evaluation.runner import EvaluationSettings

log = logging.getLogger(__name__)
COMPARE_ON = ("same", "intersection")


@dataclass(frozen=True)
class EvaluateSettings:
    """conf/evaluate.yaml (``evaluation.*`` aside), judged before any checkpoint, predictions
    file or image is read. ``data.*`` given here replace the checkpoint's data settings."""

    ckpt: str | None
    preds: str | None
    val_preds: str | None
    split: str
    compare: str | None
    compare_ckpt: str | None
    compare_on: str
    data: Mapping[str, Any]
    wandb: bool
    wandb_project: str

    def __post_init__(self) -> None:
        from chexnet_pl.data.splits import SPLITS

        problems = Problems()
        if (self.ckpt is None) == (self.preds is None):
            problems.add("give exactly one of ckpt=path/to/best.ckpt or preds=path/to/preds.csv")
        for key in ("ckpt", "preds", "val_preds", "compare", "compare_ckpt"):
            problems.path(key, getattr(self, key))
        if self.compare and self.compare_ckpt:
            problems.add("give one of compare=b.csv or compare_ckpt=b.ckpt, not both")
        problems.choice("split", self.split, SPLITS)
        problems.choice("compare_on", self.compare_on, COMPARE_ON)
        problems.flag("wandb", self.wandb)
        problems.text("wandb_project", self.wandb_project)
        if self.preds is not None and not self.data.get("root") and not self.data.get("csv"):
            problems.add("preds= needs the NIH labels: give data.root=/path/to/nih (or data.csv=)")
        self._check_data(problems)
        problems.raise_if_any()

    def _check_data(self, problems: Problems) -> None:
        """The ``data.*`` given, judged by the data module's own check (the checkpoint's
        settings, read later, fill the rest)."""
        from chexnet_pl.data.settings import check_data_settings
        from chexnet_pl.errors import ConfigError
        from chexnet_pl.shipped import shipped

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
    from chexnet_pl.evaluation.runner import EvaluationSettings
    from chexnet_pl.settings import command_settings, dry_run, resolved

    values = resolved(cfg)
    problems = Problems()
    settings = dry_run(
        problems, lambda: command_settings(EvaluateSettings, {k: v for k, v in values.items()
                                                               if k != "evaluation"})
    )  # fmt: skip
    evaluation = dry_run(problems, lambda: EvaluationSettings.from_config(values["evaluation"]))
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
    datamodule: NIHDataModule | None,
) -> dict[str, float]:
    """``compare=b.csv`` or ``compare_ckpt=b.ckpt``: ΔAUROC of A (``preds=``/``ckpt=``) − B on
    the images both have; writes compare.csv and compare.png."""
    import pandas as pd

    from chexnet_pl.checkpoints import datamodule_for, load_run
    from chexnet_pl.data.datamodule import NIHDataModule
    from chexnet_pl.evaluation.compare import write_comparison
    from chexnet_pl.evaluation.predictions import PredictionCache, read_predictions
    from chexnet_pl.evaluation.runner import predict_split

    output_dir = Path(cfg.paths.output_dir)
    if cfg.compare:
        preds_b, names_b = read_predictions(cfg.compare, truth.index)
        label_b = str(cfg.compare)
    else:
        other = load_run(cfg.compare_ckpt)
        if datamodule is not None:  # A's data and split, at the size B was trained at
            datamodule = NIHDataModule(
                **{**datamodule.hparams, "image_size": other.image_size,
                   "include_no_finding": other.model.hparams.include_no_finding}
            )  # fmt: skip
        else:
            datamodule = datamodule_for(other, cfg.data, output_dir)
        preds_b = predict_split(
            other.model, datamodule, cfg.split, settings, PredictionCache(other.path)
        )
        preds_b.to_csv(output_dir / "preds_compare.csv", index=False)
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


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Run the evaluation ``cfg`` describes; returns ``<split>/auroc`` and per-class metrics."""
    import pandas as pd

    from chexnet_pl.checkpoints import datamodule_for, load_run
    from chexnet_pl.data.nih_table import IMAGE, find_data_entry, read_data_entry
    from chexnet_pl.evaluation.predictions import read_predictions
    from chexnet_pl.evaluation.runner import (
        EvaluationSettings,
        evaluate_model,
        label_index,
        log_to_wandb,
        score_and_write,
    )

    check_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    settings = EvaluationSettings.from_config(cfg.evaluation)
    split = cfg.split
    if cfg.ckpt:
        run = load_run(cfg.ckpt)
        datamodule = datamodule_for(run, cfg.data, output_dir)
        table, metrics = evaluate_model(
            run.model, datamodule, output_dir, settings, split, run.path
        )
        if cfg.compare or cfg.compare_ckpt:
            preds = pd.read_csv(output_dir / "preds.csv", dtype={IMAGE: str})
            truth = label_index(datamodule.table)
            metrics |= compare_with(cfg, preds, run.model.class_names, truth, settings, datamodule)
    else:
        csv = Path(cfg.data.csv) if cfg.data.csv else find_data_entry(cfg.data.root)
        truth = label_index(read_data_entry(csv))
        preds, names = read_predictions(cfg.preds, truth.index)
        val_preds = read_predictions(cfg.val_preds, truth.index)[0] if cfg.val_preds else None
        table, metrics = score_and_write(
            preds, truth, names, output_dir, settings, split, val_preds
        )
        if cfg.compare or cfg.compare_ckpt:
            metrics |= compare_with(cfg, preds, names, truth, settings, None)
    if cfg.wandb:
        import wandb

        wandb_run = wandb.init(
            project=cfg.wandb_project, dir=str(output_dir), job_type="evaluate",
            config=OmegaConf.to_container(cfg, resolve=True),
        )  # fmt: skip
        log_to_wandb(wandb_run, table, output_dir, split)
        wandb_run.summary.update(metrics)
        wandb_run.finish()
    log.info("outputs in %s", output_dir)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="evaluate")
def hydra_main(cfg: DictConfig) -> float | None:
    metrics = run_or_exit(evaluate, cfg)
    return metrics.get(f"{cfg.split}/auroc")


def main() -> None:
    run_command("evaluate", hydra_main)


if __name__ == "__main__":
    main()
