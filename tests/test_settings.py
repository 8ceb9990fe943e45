"""Settings checked before anything is built: a typo in a value read only after training (the
test evaluation, heat maps, the scheduler) stops the run at once with its key, value and the
allowed values; the commands turn these errors into one line and exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_model

from chexnet_pl.cli import run_or_exit
from chexnet_pl.errors import ChexnetError, ConfigError
from chexnet_pl.evaluation.predictions import predict
from chexnet_pl.evaluation.report import choose_threshold
from chexnet_pl.models.module import build_optimizer
from chexnet_pl.train import train
from chexnet_pl.visualization.heatmaps import CAMUnavailableError, resolve_method

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("evaluation.tta=hflp", r"evaluation.tta='hflp' .*use one of: none, hflip, tencrop"),
        ("evaluation.threshold=max", r"evaluation.threshold='max' .*use one of: youden, f1"),
        (
            "evaluation.precision=fp64",
            r"evaluation.precision='fp64' is not a precision; use one of .*'32-true', 'bf16-mixed'",
        ),
        ("+evaluation.boostrap=10", r"unknown setting\(s\) in evaluation: boostrap"),
        ("callbacks.visualization.method=gradcm", r"visualization.method='gradcm' .*gradcam"),
        ("model.optimizer.name=adamm", r"model.optimizer.name='adamm' .*adam, adamw, sgd"),
        ("model.scheduler.name=step", r"model.scheduler.name='step' .*plateau, cosine, none"),
        ("model.optimizer.lr=-1", r"model.optimizer.lr=-1 is out of range; .*\(0, inf\)"),
        ("+model.scheduler.paitence=2", r"model.scheduler \(plateau\): paitence"),
        ("callbacks.model_checkpoint.monitor=val/aurc", r"monitor='val/aurc' .*val/auroc, "),
        ("model.backbone=densenet122", r"model.backbone='densenet122' .*densenet121"),
        ("data.split.method=random", r"data.split.method='random' .*official, patient, file"),
        ("evaluation.confidence=95", r"evaluation.confidence=95 is out of range"),
    ],
)
def test_a_bad_setting_stops_before_anything_is_built(make_cfg, override, message):
    cfg = make_cfg(override)
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not Path(cfg.paths.output_dir).exists()  # nothing written, nothing trained


def test_cam_on_a_head_without_it_stops_before_training(make_cfg):
    cfg = make_cfg("model.backbone=alexnet", "data.image_size=64",
                   "callbacks.visualization.method=cam")  # fmt: skip
    with pytest.raises(CAMUnavailableError, match=r"alexnet's head is .*method=gradcam"):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_retrain_without_init_from_stops_before_anything_is_built(make_cfg):
    cfg = make_cfg(experiment="retrain")
    assert cfg.get("init_from") is None  # train.yaml's null wins over a `???` in the experiment
    with pytest.raises(ConfigError, match=r"^init_from is required.*init_from=outputs/"):
        train(cfg)
    assert not Path(cfg.paths.output_dir).exists()


def test_config_value_errors_deep_in_the_code_are_the_projects_own(tmp_path):
    """Reached by code that bypasses the config check: still one line, exit status 2."""
    model = make_model().eval()
    scores, labels = np.array([0.1, 0.9]), np.array([0, 1])
    loader = [{"img": torch.zeros(1, 1, 32, 32, dtype=torch.uint8), "name": ["a.png"]}]
    failures = {
        "optimizer": lambda: build_optimizer(model.parameters(), {"name": "adamm", "lr": 1e-3}),
        "threshold": lambda: choose_threshold(scores, labels, "max"),
        "tta": lambda: predict(model, loader, model.class_names, tta="flip"),
        "precision": lambda: predict(model, loader, model.class_names, precision="fp64"),
        "heat-map method": lambda: resolve_method(model, "gradcm"),
    }
    for name, failure in failures.items():
        with pytest.raises(ChexnetError):
            failure()
        with pytest.raises(SystemExit) as exit_info:
            run_or_exit(lambda cfg, failure=failure: failure(), None)
        assert exit_info.value.code == 2, name


def test_command_line_reports_a_bad_setting_in_one_line(synthetic_root, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "chexnet_pl.train", "experiment=demo", f"data.root={synthetic_root}",
         "data.synthetic=null", "evaluation.tta=hflp", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2
    assert "evaluation.tta='hflp' is not a valid setting" in run.stderr + run.stdout
    assert "Traceback" not in run.stderr


def test_a_missing_mandatory_setting_of_any_command_is_one_line(tmp_path):
    """``ckpt: ???`` in predict.yaml: before, OmegaConf's MissingMandatoryValue traceback."""
    run = subprocess.run(
        [sys.executable, "-m", "chexnet_pl.predict", "image=x.png", f"hydra.run.dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2
    assert "required setting not given: ckpt=..." in run.stdout + run.stderr
    assert "Traceback" not in run.stderr
