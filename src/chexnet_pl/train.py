"""Train (and test) a chest X-ray classifier: ``python -m chexnet_pl.train experiment=densenet121``."""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.loggers import WandbLogger

from chexnet_pl.callbacks import AtomicCheckpointIO
from chexnet_pl.cli import unwritable_reason
from chexnet_pl.data.datamodule import split_global_batch
from chexnet_pl.errors import (
    ChexnetError,
    DataError,
    ImageReadError,
    TrainingError,
    WeightsError,
)
from chexnet_pl.evaluation.predictions import cpu_has_fast_bf16
from chexnet_pl.evaluation.runner import EvaluationSettings, evaluate_model, log_to_wandb
from chexnet_pl.models.init_from import init_from_checkpoint, read_checkpoint
from chexnet_pl.models.module import CheXNetModule
from chexnet_pl.reporting import auroc_table, format_auroc_table
from chexnet_pl.run_info import run_info
from chexnet_pl.settings import check_heatmap_method, check_train_config
from chexnet_pl.sweep import RUN_SUMMARY

log = logging.getLogger(__name__)
# Lightning 2.6 warns about its own use of a torch API on every step; it is noise to users.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")

# Monitors whose best value is the mean validation AUROC (run_summary's best_val_auroc).
AUROC_MONITORS = ("val/auroc", "val/auroc_best")
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def resolve_precision(requested: str | int, accelerator: str = "auto") -> str | int:
    """``auto`` → bf16-mixed on CUDA (16-mixed where bf16 is missing); on CPU bf16-mixed where
    the CPU has native bf16 (AVX512-BF16/AMX), else 32-true (emulated bf16 is slower than fp32)."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda"):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_fast_bf16() else "32-true"


def _unwrap_worker_error(exc: Exception, on_bad_image: str = "error") -> Exception:
    """A DataLoader worker's ImageReadError reaches here as a RuntimeError holding its traceback
    as text; give the user the error itself, not the worker's stack, and advice that fits."""
    text = str(exc)
    if isinstance(exc, ImageReadError):
        reason = text
    elif "Caught ImageReadError" in text:
        line = next(
            (x for x in reversed(text.splitlines()) if "ImageReadError: " in x),
            text.splitlines()[0],
        )
        reason = line.split("ImageReadError: ", 1)[-1]
    else:
        return exc
    if on_bad_image == "skip":
        advice = (
            "data.on_bad_image=skip replaces such images only in the training split (skipping one "
            "would change what validation and test measure); the val and test images of "
            "data.decode_check were decoded before training, so this file changed since or its "
            "split is not in data.decode_check. Replace the file, or add its split to "
            "data.decode_check so such files are left out before training."
        )
    else:
        advice = "Replace the file, or set data.on_bad_image=skip to leave such images out."
    return DataError(f"{reason}. {advice}")


def check_output_dir(output_dir: Path, min_free_gb: float) -> None:
    """Fail before training, not at the first checkpoint, when outputs cannot be written."""
    reason = unwritable_reason(output_dir)
    if reason is not None:
        raise TrainingError(
            f"cannot write to the output folder {output_dir}: {reason}. "
            "Choose another with hydra.run.dir=... (or paths.output_dir=...)"
        )
    free_gb = shutil.disk_usage(output_dir).free / 1e9
    if free_gb < min_free_gb:
        raise TrainingError(
            f"only {free_gb:.2f} GB free where the run writes ({output_dir}); checkpoints need more "
            f"(paths.min_free_gb={min_free_gb}). Free space or choose another folder with hydra.run.dir=..."
        )


def check_resumable(model: CheXNetModule, ckpt_path: str) -> None:
    """A checkpoint of another backbone or class count gets a plain message, not a key dump."""
    stored = read_checkpoint(ckpt_path).get("hyper_parameters", {})
    for key in ("backbone", "include_no_finding"):
        if key in stored and stored[key] != model.hparams[key]:
            raise WeightsError(
                f"cannot resume from {ckpt_path}: it has {key}={stored[key]!r}, this run has "
                f"{key}={model.hparams[key]!r}. Resume with the settings of that run, or start from its "
                "weights with init_from= instead."
            )


def check_input_size(model: CheXNetModule, image_size: int) -> None:
    """A backbone that cannot take ``image_size`` px (AlexNet below 63 px) stops with a message
    before training, not with a pooling error at the first step."""
    probe = torch.zeros(1, 1, image_size, image_size, dtype=torch.uint8, device=model.device)
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(probe)
    except RuntimeError as exc:
        raise TrainingError(
            f"model.backbone={model.hparams.backbone} cannot take {image_size} px images "
            f"({str(exc).splitlines()[0][:160]}). Raise data.image_size."
        ) from exc
    finally:
        model.train(was_training)


def _instantiate_all(section: DictConfig | None) -> list:
    if not section:
        return []
    return [
        hydra.utils.instantiate(item) for item in section.values() if item and "_target_" in item
    ]


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Instantiate data, model, callbacks, loggers and trainer from ``cfg``; fit, then test."""
    check_train_config(cfg)  # every setting, before anything is built
    output_dir = Path(cfg.paths.output_dir)
    check_output_dir(output_dir, float(cfg.paths.get("min_free_gb", 1.0)))
    (output_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    pl.seed_everything(cfg.seed, workers=True)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")

    (output_dir / "run_info.json").write_text(json.dumps(run_info(), indent=1))

    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model)
    check_input_size(model, int(cfg.data.image_size))
    visualization = (cfg.get("callbacks") or {}).get("visualization")
    if visualization and int(visualization.get("n_images", 0)) > 0:
        check_heatmap_method(model, "callbacks.visualization.method", visualization.method)
    if cfg.get("init_from"):
        init_from_checkpoint(model, cfg.init_from)
    if cfg.get("ckpt_path"):
        check_resumable(model, cfg.ckpt_path)
    callbacks = _instantiate_all(cfg.get("callbacks"))
    loggers = _instantiate_all(_name_sweep_runs(cfg.get("logger")))
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg["precision"] = resolve_precision(
        trainer_cfg.get("precision", "auto"), str(trainer_cfg.get("accelerator", "auto"))
    )
    if trainer_cfg.get("sync_batchnorm") and (
        trainer_cfg.get("accelerator") == "cpu" or not torch.cuda.is_available()
    ):
        log.info("sync_batchnorm needs GPUs; off for this CPU run")
        trainer_cfg["sync_batchnorm"] = False
    trainer: pl.Trainer = hydra.utils.instantiate(
        trainer_cfg, callbacks=callbacks, logger=loggers, plugins=[AtomicCheckpointIO()]
    )
    log.info("precision %s on %s", trainer_cfg["precision"], trainer.accelerator.__class__.__name__)
    per_process = split_global_batch(int(cfg.data.batch_size), trainer.world_size)
    log.info(
        "global batch %d = %d process(es) x %d images (data.batch_size is the global batch)",
        per_process * trainer.world_size, trainer.world_size, per_process,
    )  # fmt: skip
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    except RuntimeError as exc:
        raise _unwrap_worker_error(exc, cfg.data.get("on_bad_image", "error")) from exc
    except ImageReadError as exc:
        raise _unwrap_worker_error(exc, cfg.data.get("on_bad_image", "error")) from exc
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if trainer.is_global_zero:
        _write_run_summary(trainer, output_dir, cfg.get("optimized_metric"))

    if cfg.get("test") and trainer.is_global_zero:
        metrics.update(_evaluate_best(cfg, trainer, model, datamodule, output_dir))
    elif trainer.is_global_zero:
        table = auroc_table(metrics, model.class_names, stages=("val",))
        table.to_csv(output_dir / "auroc_table.csv")
        log.info(
            "per-class validation AUROC (run folder %s):\n%s", output_dir, format_auroc_table(table)
        )
    return metrics, {"trainer": trainer, "model": model, "datamodule": datamodule}


def _name_sweep_runs(logger_cfg: DictConfig | None) -> DictConfig | None:
    """In a multirun, W&B runs of one sweep share a group and are named by their overrides."""
    if not logger_cfg or "wandb" not in logger_cfg or not HydraConfig.initialized():
        return logger_cfg
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return logger_cfg
    logger_cfg = logger_cfg.copy()
    with open_dict(logger_cfg):
        if logger_cfg.wandb.get("group") is None:
            logger_cfg.wandb.group = Path(hydra_cfg.sweep.dir).name
        if logger_cfg.wandb.get("name") is None:
            logger_cfg.wandb.name = hydra_cfg.job.override_dirname or f"job{hydra_cfg.job.num}"
    return logger_cfg


def _write_run_summary(trainer: pl.Trainer, output_dir: Path, metric_name: str | None) -> None:
    """``run_summary.json``: the checkpoint's monitored metric (its name, direction and best
    value), its epoch and checkpoint (read by sweep summaries). ``best_val_auroc`` only when that
    metric is the mean validation AUROC: a loss is never reported as one."""
    callback = trainer.checkpoint_callback
    best_path = callback.best_model_path if callback else ""
    best_epoch = None
    if best_path:
        best_epoch = int(
            torch.load(best_path, map_location="cpu", weights_only=True, mmap=True)["epoch"]
        )
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
    (output_dir / RUN_SUMMARY).write_text(json.dumps(summary, indent=1))
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and summary["best_monitor"] is not None:
            logger.experiment.summary[f"{monitor}_best_checkpoint"] = summary["best_monitor"]
            if summary.get("best_val_auroc") is not None:
                logger.experiment.summary["val/auroc_best"] = summary["best_val_auroc"]


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
    try:
        table, metrics = evaluate_model(
            model, datamodule, output_dir, settings, "test", best or None
        )
    except (ChexnetError, RuntimeError) as exc:
        # Hours of training are not lost to one file: say so, and how to evaluate again.
        problem = _unwrap_worker_error(exc, cfg.data.get("on_bad_image", "error"))
        if not isinstance(problem, ChexnetError):
            raise
        rerun = f"python -m chexnet_pl.evaluate ckpt={best}" if best else "the evaluate command"
        raise TrainingError(
            f"training finished and its checkpoints are kept, but the test evaluation failed: "
            f"{problem} Then evaluate with: {rerun}"
        ) from exc
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
        logger.save()
        if isinstance(logger, WandbLogger):
            log_to_wandb(logger.experiment, table, output_dir, "test")
            logger.experiment.summary.update(metrics)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics, _ = train(cfg)
    except ChexnetError as exc:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweep records it in summary.csv and goes on with the other runs
        log.error("%s", exc)
        raise SystemExit(2) from exc
    name = cfg.get("optimized_metric")
    if name and name not in metrics:
        log.warning("optimized_metric %r was not logged; sweepers get None", name)
    return metrics.get(name) if name else None


if __name__ == "__main__":
    main()
