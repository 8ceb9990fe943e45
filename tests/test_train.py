"""The shipped Hydra configs, composed for real and run with a real Lightning Trainer."""

from __future__ import annotations

import importlib.resources
import os
import subprocess
import sys
from pathlib import Path

import hydra
import pandas as pd
import pytest
import torch
from conftest import compose_train_config, tiny_overrides
from omegaconf import OmegaConf

from chexnet_pl.command_runner import CONFIG_MODULE
from chexnet_pl.data.nih_table import class_names
from chexnet_pl.data.nih_table import class_names as nih_class_names
from chexnet_pl.data.synthetic import generate_synthetic_nih
from chexnet_pl.models.module import CheXNetModule
from chexnet_pl.train import train

REPO = Path(__file__).resolve().parents[1]

EXPERIMENTS = sorted(
    p.name.removesuffix(".yaml")
    for p in importlib.resources.files(CONFIG_MODULE).joinpath("experiment").iterdir()
    if p.name.endswith(".yaml")
)


def test_short_run_writes_checkpoints_tables_and_reloads(make_cfg, tmp_path):
    cfg = make_cfg("trainer.max_epochs=2", "trainer.limit_train_batches=3")
    metrics, objects = train(cfg)
    run = Path(cfg.paths.output_dir)
    assert (run / "checkpoints" / "best.ckpt").is_file() and (
        run / "checkpoints" / "last.ckpt"
    ).is_file()
    resolved = OmegaConf.load(run / "config_resolved.yaml")
    assert (
        resolved.data.root == cfg.data.root
        and "${" not in (run / "config_resolved.yaml").read_text()
    )
    logged = pd.read_csv(run / "csv" / "metrics.csv")
    assert {"train/loss_epoch", "val/loss", "val/auroc", "val/auroc_best", "test/auroc"} <= set(
        logged.columns
    )
    assert logged.loc[logged["val/loss"].notna(), "epoch"].tolist() == [0, 1]
    table = pd.read_csv(
        run / "aucs.csv", index_col="class"
    )  # the evaluation of the best checkpoint
    assert list(table.index) == [*class_names()[:14], "Mean (14 findings)", "No Finding"]
    assert abs(table.loc["Mean (14 findings)", "auroc"] - metrics["test/auroc"]) < 1e-6
    assert (
        (run / "preds.csv").is_file()
        and (run / "preds_val.csv").is_file()
        and (run / "roc_curves.png").is_file()
    )

    best = CheXNetModule.load_from_checkpoint(
        run / "checkpoints" / "best.ckpt", map_location="cpu"
    ).eval()
    assert best.hparams.backbone == "densenet121" and best.class_names == class_names()
    last = CheXNetModule.load_from_checkpoint(
        run / "checkpoints" / "last.ckpt", map_location="cpu"
    ).eval()
    trained = objects["model"].cpu().eval()
    images = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(last.predict_proba(images), trained.predict_proba(images))
    checkpoint = torch.load(
        run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True
    )
    assert checkpoint["hyper_parameters"]["optimizer"]["name"] == "adam"
    data_hparams = checkpoint["datamodule_hyper_parameters"]  # how to rebuild the same split
    assert data_hparams["image_size"] == 32 and data_hparams["split"]["method"] == "official"


def test_fourteen_outputs_is_one_setting(make_cfg):
    cfg = make_cfg("include_no_finding=false", "+trainer.fast_dev_run=true")
    _, objects = train(cfg)
    assert objects["model"].net.classifier.out_features == 14
    assert objects["datamodule"].num_classes == 14


def test_pos_weight_reaches_the_loss(make_cfg):
    cfg = make_cfg("model.pos_weight=true", "+trainer.fast_dev_run=true")
    _, objects = train(cfg)
    expected = torch.as_tensor(objects["datamodule"].pos_weight())
    torch.testing.assert_close(objects["model"].loss_pos_weight, expected)
    assert (expected[:14] > 1).all()  # every finding is a minority class here


def test_one_precision_vocabulary_for_training_and_evaluation():
    """Evaluation takes the trainer's names (and the short ones); autocast follows them."""
    from chexnet_pl.errors import ChexnetError
    from chexnet_pl.models.precision import autocast_context, check_precision

    assert [check_precision(n) for n in ("fp32", "bf16", "fp16", "16-mixed")] == [
        "32-true", "bf16-mixed", "16-mixed", "16-mixed",
    ]  # fmt: skip
    with pytest.raises(ChexnetError, match=r"evaluation.precision='half' is not a precision"):
        check_precision("half", "evaluation.precision")
    cpu = torch.device("cpu")
    with autocast_context(cpu, "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    for name in ("32-true", "16-mixed"):  # fp16 autocast on a CPU would be slower: fp32
        with autocast_context(cpu, name):
            assert not torch.is_autocast_enabled("cpu")


@pytest.mark.slow
def test_command_line_entry_point(nih_sample, tmp_path):
    """``chexnet-train experiment=densenet121 data.root=...`` as a user runs it, with the shipped
    values (``data.num_workers: auto`` stopped it at once before issue 19); no download
    (``model.pretrained=false``), and 2 training batches, so it takes a minute on 2 cores."""
    run_dir = tmp_path / "cli_run"
    command = [
        str(Path(sys.executable).parent / "chexnet-train"),
        "experiment=densenet121",
        f"data.root={nih_sample}",
        "model.pretrained=false",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "WANDB_MODE": "offline"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / "train.log").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    log = (run_dir / "train.log").read_text()
    assert "Mean (14 findings)" in log and "data loading: workers" in log
    assert (run_dir / "aucs.csv").is_file()
    # What the user sees: the model summary, without Lightning's advertisement or zero FLOPs.
    output = result.stdout + result.stderr
    assert "M trainable parameters" in output
    assert "litlogger" not in output and "FLOPs" not in output
    assert "not supported by the model summary" not in output


def test_wandb_logger_offline(make_cfg, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = make_cfg("logger=wandb")
    _, objects = train(cfg)
    names = [type(lg).__name__ for lg in objects["trainer"].loggers]
    assert names == ["CSVLogger", "WandbLogger"]
    import wandb

    wandb.finish()
    assert list(Path(cfg.paths.output_dir, "wandb").glob("offline-run-*"))


def test_instantiated_objects_are_plain(tmp_path, synthetic_root):
    cfg = compose_train_config(tmp_path / "run", tiny_overrides(synthetic_root))
    model = hydra.utils.instantiate(cfg.model, class_names=nih_class_names())  # as train does
    assert isinstance(model.hparams.optimizer, dict) and isinstance(
        model.hparams.optimizer["betas"], list
    )


def test_demo_recipe_learns_the_synthetic_findings(tmp_path, compose_cfg):
    """A real check that labels, images and training line up: lesions are learnt in two epochs."""
    root = tmp_path / "learnable"
    generate_synthetic_nih(
        root, num_patients=120, images_per_patient=3, image_size=64, prevalence=0.2, seed=5
    )
    cfg = compose_cfg(
        tmp_path / "run",
        [
            "experiment=demo",
            f"data.root={root}",
            "data.synthetic=null",
            "data.num_workers=0",
            "data.batch_size=16",
            "trainer.max_epochs=2",
            "trainer.enable_progress_bar=false",
            "test=false",
        ],
    )
    metrics, _ = train(cfg)
    assert metrics["val/auroc"] > 0.8, metrics
