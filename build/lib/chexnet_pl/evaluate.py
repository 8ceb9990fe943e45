"""Evaluate a checkpoint or score a predictions file against the NIH labels.

chexnet-evaluate ckpt=outputs/.../checkpoints/best.ckpt [data.root=/data/nih] [split=test]
chexnet-evaluate preds=preds.csv data.root=/data/nih [val_preds=preds_val.csv]
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from chexnet_pl.checkpoints import datamodule_for, load_run
from chexnet_pl.cli import CONFIG_PATH, run_or_exit
from chexnet_pl.data.nih_table import find_data_entry, read_data_entry
from chexnet_pl.errors import ChexnetError, DataError
from chexnet_pl.evaluation.predictions import read_predictions
from chexnet_pl.evaluation.runner import (
    EvaluationSettings,
    evaluate_model,
    label_index,
    log_to_wandb,
    score_and_write,
)

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Run the evaluation ``cfg`` describes; returns ``<split>/auroc`` and per-class metrics."""
    output_dir = Path(cfg.paths.output_dir)
    settings = EvaluationSettings.from_config(cfg.evaluation)
    split = cfg.split
    if split not in ("train", "val", "test"):
        raise DataError(f"split={split!r}; use train, val or test")
    if bool(cfg.ckpt) == bool(cfg.preds):
        raise ChexnetError("give exactly one of ckpt=path/to/best.ckpt or preds=path/to/preds.csv")
    if cfg.ckpt:
        run = load_run(cfg.ckpt)
        datamodule = datamodule_for(run, cfg.data, output_dir)
        table, metrics = evaluate_model(
            run.model, datamodule, output_dir, settings, split, run.path
        )
    else:
        if not cfg.data.get("root") and not cfg.data.get("csv"):
            raise DataError(
                "preds= needs the NIH labels: give data.root=/path/to/nih (or data.csv=)"
            )
        csv = Path(cfg.data.csv) if cfg.data.get("csv") else find_data_entry(cfg.data.root)
        truth = label_index(read_data_entry(csv))
        preds, names = read_predictions(cfg.preds, truth.index)
        val_preds = (
            read_predictions(cfg.val_preds, truth.index)[0] if cfg.get("val_preds") else None
        )
        table, metrics = score_and_write(
            preds, truth, names, output_dir, settings, split, val_preds
        )
    if cfg.get("wandb"):
        import wandb

        run = wandb.init(
            project=cfg.wandb_project, dir=str(output_dir), job_type="evaluate",
            config=OmegaConf.to_container(cfg, resolve=True),
        )  # fmt: skip
        log_to_wandb(run, table, output_dir, split)
        run.summary.update(metrics)
        run.finish()
    log.info("outputs in %s", output_dir)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    metrics = run_or_exit(evaluate, cfg)
    return metrics.get(f"{cfg.split}/auroc")


if __name__ == "__main__":
    main()
