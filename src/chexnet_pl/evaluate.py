"""Evaluate a checkpoint or score a predictions file against the NIH labels.

chexnet-evaluate ckpt=outputs/.../checkpoints/best.ckpt [data.root=/data/nih] [split=test]
chexnet-evaluate preds=preds.csv data.root=/data/nih [val_preds=preds_val.csv]
chexnet-evaluate preds=a.csv compare=b.csv data.root=/data/nih [compare_on=intersection]
chexnet-evaluate ckpt=a.ckpt compare_ckpt=b.ckpt
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from chexnet_pl.checkpoints import datamodule_for, load_run
from chexnet_pl.cli import CONFIG_PATH, run_or_exit
from chexnet_pl.data.datamodule import NIHDataModule
from chexnet_pl.data.nih_table import IMAGE, find_data_entry, read_data_entry
from chexnet_pl.errors import ChexnetError, DataError
from chexnet_pl.evaluation.compare import write_comparison
from chexnet_pl.evaluation.predictions import PredictionCache, read_predictions
from chexnet_pl.evaluation.provenance import image_sources, keep_official_test, read_official_lists
from chexnet_pl.evaluation.runner import (
    EvaluationSettings,
    evaluate_model,
    label_index,
    log_to_wandb,
    predict_split,
    score_and_write,
)
from chexnet_pl.settings import check_evaluation

log = logging.getLogger(__name__)


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
    output_dir = Path(cfg.paths.output_dir)
    if cfg.get("compare") and cfg.get("compare_ckpt"):
        raise ChexnetError("give one of compare=b.csv or compare_ckpt=b.ckpt, not both")
    if cfg.get("compare"):
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
    output_dir = Path(cfg.paths.output_dir)
    check_evaluation(cfg.evaluation)
    settings = EvaluationSettings.from_config(cfg.evaluation)
    split = cfg.split
    if split not in ("train", "val", "test"):
        raise DataError(f"split={split!r}; use train, val or test")
    if bool(cfg.ckpt) == bool(cfg.preds):
        raise ChexnetError("give exactly one of ckpt=path/to/best.ckpt or preds=path/to/preds.csv")
    if cfg.get("official_test_only") and not cfg.preds:
        raise ChexnetError(
            "official_test_only=true applies to preds=; with ckpt= the split comes from the "
            "checkpoint (data.split.method=official: its test split is the official test list)"
        )
    if cfg.ckpt:
        run = load_run(cfg.ckpt)
        datamodule = datamodule_for(run, cfg.data, output_dir)
        table, metrics = evaluate_model(
            run.model, datamodule, output_dir, settings, split, run.path
        )
        if cfg.get("compare") or cfg.get("compare_ckpt"):
            preds = pd.read_csv(output_dir / "preds.csv", dtype={IMAGE: str})
            truth = label_index(datamodule.table)
            metrics |= compare_with(cfg, preds, run.model.class_names, truth, settings, datamodule)
    else:
        if not cfg.data.get("root") and not cfg.data.get("csv"):
            raise DataError(
                "preds= needs the NIH labels: give data.root=/path/to/nih (or data.csv=)"
            )
        csv = Path(cfg.data.csv) if cfg.data.get("csv") else find_data_entry(cfg.data.root)
        truth = label_index(read_data_entry(csv))
        preds, names = read_predictions(cfg.preds, truth.index)
        lists_folder = Path(cfg.data.root) if cfg.data.get("root") else csv.parent
        lists = read_official_lists(lists_folder)
        if cfg.get("official_test_only"):
            preds = preds[keep_official_test(preds[IMAGE].tolist(), lists, str(lists_folder))]
            preds = preds.reset_index(drop=True)
        sources = image_sources(preds[IMAGE].tolist(), lists, split, lists_folder)
        val_preds = (
            read_predictions(cfg.val_preds, truth.index)[0] if cfg.get("val_preds") else None
        )
        table, metrics = score_and_write(
            preds, truth, names, output_dir, settings, split, val_preds,
            sources, Path(cfg.preds).name,
        )  # fmt: skip
        if cfg.get("compare") or cfg.get("compare_ckpt"):
            metrics |= compare_with(cfg, preds, names, truth, settings, None)
    if cfg.get("wandb"):
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
def main(cfg: DictConfig) -> float | None:
    metrics = run_or_exit(evaluate, cfg)
    return metrics.get(f"{cfg.split}/auroc")


if __name__ == "__main__":
    main()
