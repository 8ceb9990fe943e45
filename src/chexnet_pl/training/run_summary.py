"""``run_summary.json``: what a finished run achieved, read by sweep summaries and W&B."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from chexnet_pl.files import write_text_atomic

if TYPE_CHECKING:  # every command's Hydra callbacks import this module: Lightning costs seconds
    import pytorch_lightning as pl

RUN_SUMMARY = "run_summary.json"
# Monitors whose best value is the mean validation AUROC (run_summary's best_val_auroc).
AUROC_MONITORS = ("val/auroc", "val/auroc_best")


def write_run_summary(
    trainer: pl.Trainer, output_dir: Path, metric_name: str | None, model: dict | None = None
) -> dict:
    """The checkpoint's monitored metric (its name, direction and best value), its epoch and
    checkpoint (read by sweep summaries), and ``model`` (``model_identity``: backbone, recipe,
    labels, image size, checkpoint). ``best_val_auroc`` only when that metric is the mean
    validation AUROC: a loss is never reported as one."""
    from pytorch_lightning.loggers import WandbLogger

    from chexnet_pl.checkpoints.file_io import read_checkpoint

    callback = trainer.checkpoint_callback
    best_path = callback.best_model_path if callback else ""
    best_epoch = None
    if best_path:
        best_epoch = int(read_checkpoint(best_path, lazy=True)["epoch"])
    best_score = callback.best_model_score if callback else None
    monitor = callback.monitor if callback else None
    summary = {
        "monitor": monitor,
        "mode": callback.mode if callback else None,
        "best_monitor": float(best_score) if best_score is not None else None,
        "best_epoch": best_epoch,
        "checkpoint": best_path or None,
        "last_checkpoint": str(Path(best_path).with_name("last.ckpt")) if best_path else None,
        "optimized_metric": metric_name,
        "optimized_value": float(trainer.callback_metrics[metric_name])
        if metric_name in trainer.callback_metrics
        else None,
    }
    if monitor in AUROC_MONITORS:
        summary["best_val_auroc"] = summary["best_monitor"]
    if model is not None:
        summary["model"] = model
    write_text_atomic(output_dir / RUN_SUMMARY, json.dumps(summary, indent=1))
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and summary["best_monitor"] is not None:
            logger.experiment.summary[f"{monitor}_best_checkpoint"] = summary["best_monitor"]
            if summary.get("best_val_auroc") is not None:
                logger.experiment.summary["val/auroc_best"] = summary["best_val_auroc"]
    return summary
