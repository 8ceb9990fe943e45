"""Evaluate a checkpoint or score a predictions file against the NIH labels.

python -m chexnet_pl.evaluate ckpt=outputs/.../checkpoints/best.ckpt [data.root=/data/nih] [split=test]
python -m chexnet_pl.evaluate preds=preds.csv data.root=/data/nih [val_preds=preds_val.csv]
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from chexnet_pl.cli import run_or_exit
from chexnet_pl.data.datamodule import NIHDataModule
from chexnet_pl.data.nih_table import find_data_entry, read_data_entry
from chexnet_pl.errors import ChexnetError, DataError, WeightsError
from chexnet_pl.evaluation.predictions import read_predictions
from chexnet_pl.evaluation.runner import (
    EvaluationSettings,
    evaluate_model,
    label_index,
    log_to_wandb,
    score_and_write,
)
from chexnet_pl.models.init_from import read_checkpoint
from chexnet_pl.models.module import CheXNetModule
from chexnet_pl.settings import check_evaluation
from chexnet_pl.train import CONFIG_DIR

log = logging.getLogger(__name__)

DATA_OVERRIDES = ("root", "csv", "image_size", "num_workers", "eval_batch_size", "missing_images")


def datamodule_from_checkpoint(
    checkpoint: Path, data_cfg: DictConfig, output_dir: Path, include_no_finding: bool
) -> NIHDataModule:
    """The data and split the checkpoint was trained with; ``data.*`` given here take precedence."""
    stored = read_checkpoint(checkpoint).get("datamodule_hyper_parameters")
    if not stored:
        if not data_cfg.get("root"):
            raise DataError(f"{checkpoint} holds no data settings; give data.root=/path/to/nih")
        stored = {}
    # The model decides the classes (an imported 14-output checkpoint stores no data settings).
    settings = {**stored, "synthetic": None, "report_dir": str(output_dir)}
    settings["include_no_finding"] = include_no_finding
    settings.update({k: data_cfg[k] for k in DATA_OVERRIDES if data_cfg.get(k) is not None})
    return NIHDataModule(**settings)


def load_model(checkpoint: Path) -> CheXNetModule:
    if not checkpoint.is_file():
        raise WeightsError(f"checkpoint not found: {checkpoint} (ckpt=)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return CheXNetModule.load_from_checkpoint(checkpoint, map_location=device).eval()


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Run the evaluation ``cfg`` describes; returns ``<split>/auroc`` and per-class metrics."""
    output_dir = Path(cfg.paths.output_dir)
    check_evaluation(cfg.evaluation)
    settings = EvaluationSettings.from_config(cfg.evaluation)
    split = cfg.split
    if split not in ("train", "val", "test"):
        raise DataError(f"split={split!r}; use train, val or test")
    if bool(cfg.ckpt) == bool(cfg.preds):
        raise ChexnetError("give exactly one of ckpt=path/to/best.ckpt or preds=path/to/preds.csv")
    if cfg.ckpt:
        checkpoint = Path(cfg.ckpt).expanduser()
        model = load_model(checkpoint)
        datamodule = datamodule_from_checkpoint(
            checkpoint, cfg.data, output_dir, model.hparams.include_no_finding
        )
        table, metrics = evaluate_model(model, datamodule, output_dir, settings, split, checkpoint)
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


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    metrics = run_or_exit(evaluate, cfg)
    return metrics.get(f"{cfg.split}/auroc")


if __name__ == "__main__":
    main()
