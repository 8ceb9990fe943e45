"""A training run from a composed ``train`` config (``conf/train.yaml`` and its recipe): data,
model, callbacks, loggers and trainer built as the config says; fit; then the best checkpoint's
test evaluation (``test=true``) or the per-class validation AUROC table, all in the run folder
``paths.output_dir``. In a Hydra multirun, W&B runs of one sweep share a group.

The config is taken as judged: ``chexnet-train`` and ``chexnet_pl.train`` run the pre-flight
check (``chexnet_pl.settings.check_train_config``) on it first, before calling ``run_training``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from chexnet_pl.files import write_csv_atomic, write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    import pytorch_lightning as pl

log = logging.getLogger(__name__)
# Lightning 2.6 warns about its own use of a torch API on every step; it is noise to users.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def _instantiate_all(section: DictConfig | None) -> list:
    """The components of a config section (``callbacks``, ``logger``): those with a ``_target_``."""
    if not section:
        return []
    return [
        hydra.utils.instantiate(item) for item in section.values() if item and "_target_" in item
    ]


def run_training(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Instantiate data, model, callbacks, loggers and trainer from ``cfg`` (a composed ``train``
    config, already checked); fit, then test. Returns the logged metrics and the run's
    ``trainer``, ``model`` and ``datamodule``."""
    import pytorch_lightning as pl

    from chexnet_pl.callbacks import SyncFreeProgressBar
    from chexnet_pl.callbacks.progress import on_terminal
    from chexnet_pl.callbacks.startup_output import ParameterSummary, quiet_lightning
    from chexnet_pl.checkpoints.lightning_io import AtomicCheckpointIO
    from chexnet_pl.components import instantiate
    from chexnet_pl.data.datamodule import split_global_batch
    from chexnet_pl.device import apply_backend_flags, backend_flags, detect_caps
    from chexnet_pl.errors import ImageReadError, TrainingError
    from chexnet_pl.evaluation.auroc import auroc_table, format_auroc_table
    from chexnet_pl.model_identity import data_source, of_model, training_recipe
    from chexnet_pl.models.init_from import init_from_checkpoint
    from chexnet_pl.models.input_contract import input_size
    from chexnet_pl.ood import OodSettings, fit_after_training
    from chexnet_pl.training.run_checks import (
        check_output_dir,
        check_resumable,
        unwrap_worker_error,
    )
    from chexnet_pl.training.run_info import run_info
    from chexnet_pl.training.run_summary import write_run_summary
    from chexnet_pl.training.trainer_settings import trainer_kwargs

    output_dir = Path(cfg.paths.output_dir)
    recipe, data = training_recipe(), data_source()
    log.info(
        "training %s (recipe %s) on %s at %s px; run folder %s", cfg.model.backbone,
        recipe or "defaults: no experiment=", data or "the configured data", cfg.data.image_size,
        output_dir,
    )  # fmt: skip
    check_output_dir(output_dir, float(cfg.paths.min_free_gb))
    write_text_atomic(output_dir / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    pl.seed_everything(cfg.seed, workers=True)
    caps = detect_caps()
    apply_backend_flags(backend_flags(caps))

    write_json_atomic(output_dir / "run_info.json", run_info(), indent=1)

    datamodule = instantiate(cfg.data)
    # The label list and the image size travel with the data: the model gets the data's, and
    # its checkpoints carry them (models.input_contract).
    model = hydra.utils.instantiate(
        cfg.model, class_names=list(datamodule.pathologies), image_size=datamodule.image_size
    )
    input_size(model, setting="data.image_size", error=TrainingError)  # the backbone takes it
    identity = of_model(model, None, recipe, data)
    identity.write(output_dir)
    if cfg.init_from:
        init_from_checkpoint(model, cfg.init_from)
    if cfg.ckpt_path:
        check_resumable(model, cfg.ckpt_path)
    callbacks = _instantiate_all(cfg.callbacks)
    trainer_cfg = trainer_kwargs(OmegaConf.to_container(cfg.trainer, resolve=True), caps)
    # Redirected to a file or a pipe, a bar is carriage returns and cursor codes: none then.
    trainer_cfg["enable_progress_bar"] = trainer_cfg["enable_progress_bar"] and on_terminal()
    if trainer_cfg["enable_progress_bar"]:
        callbacks.append(SyncFreeProgressBar())  # Lightning's own reads the device every step
    quiet_lightning()
    if trainer_cfg.get("enable_model_summary", True):
        callbacks.append(ParameterSummary(max_depth=1))  # Lightning's prints "Total FLOPs: 0"
    loggers = _instantiate_all(_name_sweep_runs(cfg.logger))
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
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    except (RuntimeError, ImageReadError) as exc:
        raise unwrap_worker_error(exc, cfg.data.on_bad_image) from exc
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best and trainer.is_global_zero:  # before the checkpoint is hashed for model.json
        fit_after_training(best, datamodule, OodSettings.from_config(cfg.get("ood")))
    identity = of_model(model, best or None, recipe, data)
    if trainer.is_global_zero:
        identity.write(output_dir)
        write_run_summary(trainer, output_dir, cfg.optimized_metric, identity.to_json())

    if cfg.test and trainer.is_global_zero:
        metrics.update(_evaluate_best(cfg, trainer, model, datamodule, output_dir))
    elif trainer.is_global_zero:
        table = auroc_table(metrics, model.class_names, stages=("val",))
        write_csv_atomic(table, output_dir / "auroc_table.csv")
        log.info(
            "per-class validation AUROC (run folder %s):\n%s", output_dir, format_auroc_table(table)
        )
    if trainer.is_global_zero:
        log.info(
            "run folder %s; best checkpoint %s; model: %s", output_dir,
            best or "none saved (see the warnings above)", identity.line(checkpoint=False),
        )  # fmt: skip
    return metrics, {"trainer": trainer, "model": model, "datamodule": datamodule}


def _name_sweep_runs(logger_cfg: DictConfig | None) -> DictConfig | None:
    """In a multirun, W&B runs of one sweep share a group and are named by their overrides."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

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


def _evaluate_best(
    cfg: DictConfig, trainer: pl.Trainer, model, datamodule, output_dir: Path
) -> dict[str, float]:
    """The same evaluation as ``python -m chexnet_pl.evaluate``, on the best checkpoint's weights."""
    from pytorch_lightning.loggers import WandbLogger

    from chexnet_pl.checkpoints.runs import load_run
    from chexnet_pl.errors import ChexnetError, TrainingError
    from chexnet_pl.evaluation.runner import evaluate_model, log_to_wandb
    from chexnet_pl.evaluation.settings import EvaluationSettings
    from chexnet_pl.training.run_checks import unwrap_worker_error

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        model = load_run(best, device=model.device).model
    else:
        log.warning("no best checkpoint was saved; evaluating the weights at the end of training")
    settings = EvaluationSettings.from_config(cfg.evaluation)
    try:
        table, metrics = evaluate_model(
            model, datamodule, output_dir, settings, "test", best or None
        )
    except (ChexnetError, RuntimeError) as exc:
        # Hours of training are not lost to one file: say so, and how to evaluate again.
        problem = unwrap_worker_error(exc, cfg.data.on_bad_image)
        if not isinstance(problem, ChexnetError):
            raise
        rerun = f"chexnet-evaluate ckpt={best}" if best else "the evaluate command"
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
