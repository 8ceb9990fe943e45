"""Train (and test) a chest X-ray classifier: ``python -m chexnet_pl.train experiment=densenet121``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger

from chexnet_pl.evaluation.runner import EvaluationSettings, evaluate_model, log_to_wandb
from chexnet_pl.models.module import CheXNetModule
from chexnet_pl.reporting import auroc_table, format_auroc_table

log = logging.getLogger(__name__)

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def resolve_precision(requested: str | int) -> str | int:
    """``auto`` → 16-mixed on CUDA (bf16-mixed where supported), 32-true on CPU."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def _instantiate_all(section: DictConfig | None) -> list:
    if not section:
        return []
    return [
        hydra.utils.instantiate(item) for item in section.values() if item and "_target_" in item
    ]


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Instantiate data, model, callbacks, loggers and trainer from ``cfg``; fit, then test."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    pl.seed_everything(cfg.seed, workers=True)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")

    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model)
    callbacks = _instantiate_all(cfg.get("callbacks"))
    loggers = _instantiate_all(cfg.get("logger"))
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg["precision"] = resolve_precision(trainer_cfg.get("precision", "auto"))
    trainer: pl.Trainer = hydra.utils.instantiate(trainer_cfg, callbacks=callbacks, logger=loggers)
    log.info("precision %s on %s", trainer_cfg["precision"], trainer.accelerator.__class__.__name__)
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    if cfg.get("test") and trainer.is_global_zero:
        metrics.update(_evaluate_best(cfg, trainer, model, datamodule, output_dir))
    elif trainer.is_global_zero:
        table = auroc_table(metrics, model.class_names, stages=("val",))
        table.to_csv(output_dir / "auroc_table.csv")
        log.info(
            "per-class validation AUROC (run folder %s):\n%s", output_dir, format_auroc_table(table)
        )
    return metrics, {"trainer": trainer, "model": model, "datamodule": datamodule}


def _evaluate_best(
    cfg: DictConfig, trainer: pl.Trainer, model, datamodule, output_dir: Path
) -> dict[str, float]:
    """The same evaluation as ``python -m chexnet_pl.evaluate``, on the best checkpoint's weights."""
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        model = CheXNetModule.load_from_checkpoint(best, map_location=model.device)
    else:
        log.warning("no best checkpoint was saved; evaluating the weights at the end of training")
    settings = EvaluationSettings.from_config(cfg.get("evaluation"))
    table, metrics = evaluate_model(model, datamodule, output_dir, settings, "test", best or None)
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
        logger.save()
        if isinstance(logger, WandbLogger):
            log_to_wandb(logger.experiment, table, output_dir, "test")
            logger.experiment.summary.update(metrics)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics, _ = train(cfg)
    name = cfg.get("optimized_metric")
    if name and name not in metrics:
        log.warning("optimized_metric %r was not logged; sweepers get None", name)
    return metrics.get(name) if name else None


if __name__ == "__main__":
    main()
