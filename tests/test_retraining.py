"""Resume after a kill, fine-tune from another run, sweeps and their summary, DDP on CPU,
launcher configs, reproducibility."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import compose_config, make_model

from chexnet_pl.checkpoints.lightning_io import AtomicCheckpointIO
from chexnet_pl.errors import WeightsError
from chexnet_pl.models.init_from import init_from_checkpoint
from chexnet_pl.train import train

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}


def cli(root: Path, run_dir: Path, *extra: str, multirun: bool = False) -> list[str]:
    command = [sys.executable, "-m", "chexnet_pl.train"]
    if multirun:
        command.append("-m")
    command += [
        "experiment=demo", f"data.root={root}", "data.synthetic=null", "data.image_size=32",
        "data.batch_size=8", "data.num_workers=0", "trainer.enable_progress_bar=false",
        "evaluation.bootstrap_samples=50", "evaluation.plots=false",
        f"hydra.sweep.dir={run_dir}" if multirun else f"hydra.run.dir={run_dir}", *extra,
    ]  # fmt: skip
    return command


def epoch_metrics(run_dir: Path) -> pd.DataFrame:
    logged = pd.read_csv(run_dir / "csv" / "metrics.csv")
    return logged[logged["val/loss"].notna()].set_index("epoch")[
        ["val/loss", "val/auroc", "val/auroc_best"]
    ]


@pytest.mark.slow
def test_resume_after_sigkill_continues_exactly(synthetic_root, tmp_path):
    settings = ("trainer.max_epochs=4", "+trainer.limit_train_batches=6", "test=false")
    whole = subprocess.run(cli(synthetic_root, tmp_path / "whole", *settings), env=ENV, cwd=REPO,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed_dir = tmp_path / "killed"
    process = subprocess.Popen(cli(synthetic_root, killed_dir, *settings), env=ENV, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    last = killed_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    stopped_at = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    assert stopped_at < 3
    assert not list(last.parent.glob("*.partial"))

    resumed_dir = tmp_path / "resumed"
    resumed = subprocess.run(cli(synthetic_root, resumed_dir, *settings, f"ckpt_path={last}"), env=ENV,
                             cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = epoch_metrics(tmp_path / "whole"), epoch_metrics(resumed_dir)
    assert list(got.index) == list(range(stopped_at + 1, 4))  # continues after the saved epoch
    pd.testing.assert_frame_equal(got, expected.loc[got.index], atol=1e-5, rtol=0)
    final = torch.load(
        resumed_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert final["epoch"] == 3
    # The new folder's best.ckpt is the best over all epochs, including those before the kill.
    best = json.loads((resumed_dir / "run_summary.json").read_text())
    assert best["best_val_auroc"] == pytest.approx(expected["val/auroc"].max(), abs=1e-6)
    assert best["best_epoch"] == int(expected["val/auroc"].idxmax())
    assert Path(best["checkpoint"]).parent == resumed_dir / "checkpoints"


def test_atomic_checkpoint_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1}, target)

    def crash(obj, stream):
        stream.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


@pytest.fixture(scope="module")
def source_checkpoint(tmp_path_factory):
    """A 14-output checkpoint saved by a real Trainer."""
    import pytorch_lightning as pl

    model = make_model(include_no_finding=False)
    trainer = pl.Trainer(
        max_epochs=0, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.strategy.connect(model)
    path = tmp_path_factory.mktemp("source") / "fourteen.ckpt"
    trainer.save_checkpoint(path)
    return path, model


def test_init_from_reinitialises_only_a_mismatched_head(source_checkpoint, caplog):
    path, source = source_checkpoint
    target = make_model(include_no_finding=True)
    head_before = target.net.classifier.weight.clone()
    with caplog.at_level(logging.WARNING):
        init_from_checkpoint(target, path)
    assert (
        "its head has 14 outputs, this model has 15; reinitialising the classifier only"
        in caplog.text
    )
    torch.testing.assert_close(
        target.net.features.body.conv0.weight, source.net.features.body.conv0.weight
    )
    torch.testing.assert_close(target.net.classifier.weight, head_before)
    same = make_model(include_no_finding=False)
    init_from_checkpoint(same, path)
    torch.testing.assert_close(same.net.classifier.weight, source.net.classifier.weight)


def test_init_from_refuses_other_backbones_and_unsafe_files(source_checkpoint, tmp_path):
    path, _ = source_checkpoint
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hyper_parameters"]["backbone"] = "resnet50"
    other = tmp_path / "other.ckpt"
    torch.save(checkpoint, other)
    with pytest.raises(WeightsError, match="holds a resnet50 but this run builds a densenet121"):
        init_from_checkpoint(make_model(), other)
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": {}, "callback": argparse.Namespace(a=1)}, unsafe)
    with pytest.raises(WeightsError, match="weights_only=True"):
        init_from_checkpoint(make_model(), unsafe)


def test_retrain_experiment_freezes_the_backbone_first(source_checkpoint, make_cfg):
    path, source = source_checkpoint
    cfg = make_cfg(f"init_from={path}", "trainer.max_epochs=1", "test=false", experiment="retrain")
    assert cfg.model.optimizer.lr == 1e-4 and cfg.callbacks.freeze_backbone.epochs == 1
    _, objects = train(cfg)
    model = objects["model"]
    torch.testing.assert_close(
        model.net.features.body.conv0.weight, source.net.features.body.conv0.weight
    )
    torch.testing.assert_close(
        model.net.features.body.norm5.running_mean, source.net.features.body.norm5.running_mean
    )  # batch-norm statistics frozen too
    assert model.net.classifier.out_features == 15


def test_backbone_trains_again_after_the_frozen_epochs(source_checkpoint, make_cfg):
    path, source = source_checkpoint
    cfg = make_cfg(f"init_from={path}", "trainer.max_epochs=2", "test=false", experiment="retrain")
    _, objects = train(cfg)
    body = objects["model"].net.features.body
    assert not torch.equal(body.conv0.weight, source.net.features.body.conv0.weight)
    assert not torch.equal(body.norm5.running_mean, source.net.features.body.norm5.running_mean)


def test_same_seed_same_metrics_and_run_info(make_cfg, tmp_path):
    first, _ = train(make_cfg("test=false", "trainer.max_epochs=2"))
    run = Path(make_cfg().paths.output_dir)
    info = json.loads((run / "run_info.json").read_text())
    second, _ = train(
        make_cfg(
            "test=false", "trainer.max_epochs=2", "paths.output_dir=" + str(tmp_path / "again")
        )
    )
    assert first["val/loss"] == second["val/loss"] and first["val/auroc"] == second["val/auroc"]
    import hydra
    import pytorch_lightning

    # The versions of the packages that ran, exactly (a local build suffix such as +cu130 aside).
    assert info["packages"]["torch"] == torch.__version__.split("+")[0]
    assert info["packages"]["pytorch-lightning"] == pytorch_lightning.__version__
    assert info["packages"]["hydra-core"] == hydra.__version__
    assert len(info["git_commit"] or "0" * 40) == 40
    summary = json.loads((run / "run_summary.json").read_text())
    assert summary["best_epoch"] in (0, 1) and summary["checkpoint"].endswith("best.ckpt")
    assert (run / "config_resolved.yaml").is_file()


@pytest.mark.slow
def test_sweep_summary_reports_successes_and_names_failures(synthetic_root, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = subprocess.run(
        cli(synthetic_root, sweep_dir, "hparams_search=lr_wd_grid", "trainer.max_epochs=1",
            "+trainer.limit_train_batches=2", "model.optimizer.lr=1e-3,-1",
            "model.optimizer.weight_decay=0", "test=false", multirun=True),
        env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode != 0  # lr=-1 fails, and Hydra says so at the end
    assert (sweep_dir / "0" / "checkpoints" / "best.ckpt").is_file()
    summary = pd.read_csv(sweep_dir / "summary.csv")
    assert summary["status"].tolist() == ["COMPLETED", "FAILED"]
    assert (
        "model.optimizer.lr=0.001" in summary.loc[0, "overrides"]
        and summary.loc[0, "best_val_auroc"] > 0
    )
    assert summary.loc[0, "checkpoint"].endswith("best.ckpt") and summary.loc[0, "best_epoch"] == 0
    assert (
        "model.optimizer.lr=-1 is out of range" in summary.loc[1, "error"]
        and "model.optimizer.lr=-1" in summary.loc[1, "overrides"]
    )
    assert "sweep summary" in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("overrides", "check"),
    [
        (
            ["-m", "hparams_search=lr_wd_grid"],
            lambda c: c.hydra.sweeper.params["model.optimizer.lr"] == "1e-3,3e-4,1e-4",
        ),
        (
            ["hparams_search=optuna_lr_wd"],
            lambda c: c.hydra.sweeper.direction == "maximize" and c.hydra.sweeper.n_trials == 20,
        ),
        (
            ["hydra/launcher=submitit_slurm"],
            lambda c: c.hydra.launcher._target_.endswith("SlurmLauncher"),
        ),
        (
            ["hydra/launcher=slurm_gpu"],
            lambda c: (
                c.hydra.launcher.gpus_per_node == 1
                and c.hydra.launcher._target_.endswith("SlurmLauncher")
            ),
        ),
        (["trainer=ddp"], lambda c: c.trainer.strategy == "ddp" and c.trainer.sync_batchnorm),
    ],
)
def test_sweeper_launcher_and_ddp_configs_compose(overrides, check):
    cfg = compose_config(
        "train",
        None,
        *[o for o in overrides if o != "-m"],
        "data.root=/data/nih",
        hydra_config=True,
    )
    assert check(cfg)


@pytest.mark.slow
def test_optuna_sweeper_runs(synthetic_root, tmp_path):
    sweep_dir = tmp_path / "optuna"
    result = subprocess.run(
        cli(synthetic_root, sweep_dir, "hparams_search=optuna_lr_wd", "hydra.sweeper.n_trials=2",
            "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "test=false", multirun=True),
        env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Best value" in result.stderr + result.stdout
    assert len(pd.read_csv(sweep_dir / "summary.csv")) == 2


@pytest.mark.slow
def test_ddp_on_cpu_with_two_processes(synthetic_root, tmp_path):
    run_dir = tmp_path / "ddp"
    result = subprocess.run(
        cli(synthetic_root, run_dir, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
            "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=2"),
        env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stderr + result.stdout
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in output
    # data.batch_size=8 is the global batch: 4 images per process.
    assert "global batch 8 = 2 process(es) x 4 images" in output
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "aucs.csv").is_file()


def test_global_batch_is_split_across_processes(make_cfg):
    from chexnet_pl.data.datamodule import split_global_batch
    from chexnet_pl.errors import ConfigError

    assert split_global_batch(16, 1) == 16 and split_global_batch(16, 8) == 2
    with pytest.raises(ConfigError, match=r"data.batch_size=16 .* across the 3 training processes"):
        split_global_batch(16, 3)
    cfg = make_cfg("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                   "data.batch_size=7")  # fmt: skip
    with pytest.raises(ConfigError, match=r"data.batch_size=7 .* 2 training processes; .*e.g. 6"):
        train(cfg)  # refused before any process is started
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


@pytest.mark.slow
def test_run_summary_names_the_monitored_metric(make_cfg):
    """With monitor=val/loss the best value is a loss, recorded as one (before: as best_val_auroc)."""
    cfg = make_cfg("callbacks.model_checkpoint.monitor=val/loss",
                   "callbacks.model_checkpoint.mode=min", "trainer.max_epochs=2", "test=false")  # fmt: skip
    train(cfg)
    run = Path(cfg.paths.output_dir)
    summary = json.loads((run / "run_summary.json").read_text())
    losses = epoch_metrics(run)["val/loss"]
    assert (summary["monitor"], summary["mode"]) == ("val/loss", "min")
    assert summary["best_monitor"] == pytest.approx(losses.min(), abs=1e-6)
    assert summary["best_epoch"] == int(losses.idxmin()) and "best_val_auroc" not in summary


def test_sweep_summary_sorts_by_the_monitors_direction(tmp_path):
    from chexnet_pl.training.sweep_summary import write_summary

    (tmp_path / "summary").mkdir()
    rows = [
        {
            "job": 0,
            "status": "COMPLETED",
            "monitor": "val/loss",
            "mode": "min",
            "best_monitor": 0.4,
        },
        {"job": 1, "status": "FAILED", "error": "boom"},
        {
            "job": 2,
            "status": "COMPLETED",
            "monitor": "val/loss",
            "mode": "min",
            "best_monitor": 0.2,
        },
        {
            "job": 3,
            "status": "COMPLETED",
            "monitor": "val/loss",
            "mode": "min",
            "best_monitor": 0.3,
        },
    ]
    for row in rows:
        (tmp_path / "summary" / f"{row['job']:04d}.json").write_text(json.dumps(row))
    assert write_summary(tmp_path)["job"].tolist() == [2, 3, 0, 1]  # lowest loss first
    for row in rows[::2] + rows[3:]:  # the completed runs watch an AUROC: highest first
        row.update(monitor="val/auroc", mode="max", best_val_auroc=row["best_monitor"])
        (tmp_path / "summary" / f"{row['job']:04d}.json").write_text(json.dumps(row))
    write_summary(tmp_path)
    assert pd.read_csv(tmp_path / "summary.csv")["job"].tolist() == [0, 3, 2, 1]
