"""``run_summary.json``: what a finished run achieved, read by sweep summaries and W&B."""

from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger

from chexnet_pl.files import write_text_atomic

RUN_SUMMARY = "run_summary.json"


def write_run_summary(trainer: pl.Trainer, output_dir: Path, metric_name: str | None) -> dict:
    """Best monitored value, its epoch and checkpoint, and the optimized metric's value."""
    callback = trainer.checkpoint_callback
    best_path = callback.best_model_path if callback else ""
    best_epoch = None
    if best_path:
        best_epoch = int(
            torch.load(best_path, map_location="cpu", weights_only=True, mmap=True)["epoch"]
        )
    best_score = callback.best_model_score if callback else None
    summary = {
        "best_val_auroc": float(best_score) if best_score is not None else None,
        "best_epoch": best_epoch,
        "checkpoint": best_path or None,
        "last_checkpoint": str(Path(best_path).with_name("last.ckpt")) if best_path else None,
        "optimized_metric": metric_name,
        "optimized_value": float(trainer.callback_metrics[metric_name])
        if metric_name in trainer.callback_metrics
        else None,
    }
    write_text_atomic(output_dir / RUN_SUMMARY, json.dumps(summary, indent=1))
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and summary["best_val_auroc"] is not None:
            logger.experiment.summary["val/auroc_best"] = summary["best_val_auroc"]
    return summary
