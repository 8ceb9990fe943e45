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
from conftest import compose_config, make_model
from omegaconf import OmegaConf

from chexnet_pl.cli import CONFIG_MODULE
from chexnet_pl.data.synthetic import generate_synthetic_nih
from chexnet_pl.labels import class_names
from chexnet_pl.models.module import CheXNetModule
from chexnet_pl.models.precision import resolve_precision
from chexnet_pl.train import train

REPO = Path(__file__).resolve().parents[1]

EXPERIMENTS = sorted(
    p.name.removesuffix(".yaml")
    for p in importlib.resources.files(CONFIG_MODULE).joinpath("experiment").iterdir()
    if p.name.endswith(".yaml")
)


def test_experiments_ship_the_documented_recipes(make_cfg):
    assert {"demo", "densenet121", "reproduce_chexnet"} <= set(EXPERIMENTS)
    paper = make_cfg(experiment="densenet121")
    assert paper.model.optimizer.name == "adam" and paper.model.optimizer.lr == 1e-3
    assert list(paper.model.optimizer.betas) == [0.9, 0.999]
    assert (
        paper.model.scheduler.name,
        paper.model.scheduler.factor,
        paper.model.scheduler.patience,
    ) == ("plateau", 0.1, 1)
    assert paper.callbacks.model_checkpoint.monitor == "val/auroc" and paper.test is True
    sgd = make_cfg(experiment="reproduce_chexnet")
    assert (sgd.model.optimizer.name, sgd.model.optimizer.lr, sgd.model.optimizer.momentum) == (
        "sgd",
        0.01,
        0.9,
    )
    assert sgd.model.optimizer.weight_decay == 1e-4 and sgd.callbacks.early_stopping.patience == 3


def test_paper_recipe_defaults_before_shrinking():
    """Composed without test overrides: 224 px, batch 16, ImageNet weights, 15 outputs."""
    cfg = compose_config("train", None, "experiment=densenet121", "data.root=/data/nih")
    assert (cfg.data.image_size, cfg.data.batch_size, cfg.model.pretrained) == (224, 16, True)
    assert cfg.data.include_no_finding and cfg.model.include_no_finding


@pytest.fixture(scope="module")
def start_checkpoint(tmp_path_factory) -> Path:
    """A tiny checkpoint of an untrained DenseNet-121 for the recipes that need ``init_from``."""
    path = tmp_path_factory.mktemp("init_from") / "start.ckpt"
    model = make_model()
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_fast_dev_run(make_cfg, experiment, start_checkpoint):
    size = ["data.image_size=64"] if experiment == "alexnet" else []  # AlexNet needs >= 63 px
    requires = make_cfg(experiment=experiment).get("requires") or {}
    given = [f"init_from={start_checkpoint}"] if "init_from" in requires else []
    assert set(requires) <= {"init_from"}, "a recipe needs a setting this test does not give"
    cfg = make_cfg("+trainer.fast_dev_run=true", *size, *given, experiment=experiment)
    metrics, objects = train(cfg)
    assert objects["trainer"].state.finished
    assert "test/auroc" in metrics and 0 <= metrics["test/auroc"] <= 1


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


def test_precision_auto(monkeypatch):
    from chexnet_pl.models import precision as train_module

    assert resolve_precision("bf16-mixed") == "bf16-mixed"
    monkeypatch.setattr(train_module.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(train_module, "cpu_has_fast_bf16", lambda: False)
    assert resolve_precision("auto") == "32-true"  # emulated bf16 would be slower
    monkeypatch.setattr(train_module, "cpu_has_fast_bf16", lambda: True)
    assert resolve_precision("auto") == "bf16-mixed"
    monkeypatch.setattr(train_module.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(train_module.torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto") == "16-mixed"
    monkeypatch.setattr(train_module, "cpu_has_fast_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "32-true"  # even where a GPU exists


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
def test_command_line_entry_point(synthetic_root, tmp_path):
    """``python -m chexnet_pl.train`` as a user runs it: Hydra's run folder gets every output."""
    run_dir = tmp_path / "cli_run"
    command = [
        sys.executable,
        "-m",
        "chexnet_pl.train",
        "experiment=demo",
        f"data.root={synthetic_root}",
        "data.synthetic=null",
        "data.image_size=32",
        "data.num_workers=0",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=2",
        "+trainer.limit_test_batches=2",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "WANDB_MODE": "offline"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / "train.log").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert "Mean (14 findings)" in (run_dir / "train.log").read_text()
    assert (run_dir / "aucs.csv").is_file()


@pytest.mark.slow
def test_missing_data_root_is_a_clear_error(tmp_path):
    """Run from an empty folder: the configs come from the installed package, not the cwd."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "chexnet_pl.train",
            "experiment=densenet121",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "required setting(s) not given: data.root (the NIH download folder" in output
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_wandb_logger_offline(make_cfg, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = make_cfg("logger=wandb")
    _, objects = train(cfg)
    names = [type(lg).__name__ for lg in objects["trainer"].loggers]
    assert names == ["CSVLogger", "WandbLogger"]
    import wandb

    wandb.finish()
    assert list(Path(cfg.paths.output_dir, "wandb").glob("offline-run-*"))


def test_instantiated_objects_are_plain(make_cfg):
    cfg = make_cfg()
    model = hydra.utils.instantiate(cfg.model)
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
