"""The pre-flight check: every setting judged by the component that uses it, built as a dry run
before anything is trained or read, every problem reported in one go, as the project's own
one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_train_config, make_model, tiny_overrides

from chexnet_pl.command_runner import run_or_exit
from chexnet_pl.config_defaults import shipped
from chexnet_pl.errors import ChexnetError, ConfigError
from chexnet_pl.evaluation.predictions import predict
from chexnet_pl.evaluation.report import choose_threshold
from chexnet_pl.models.module import CheXNetModule
from chexnet_pl.models.optim import build_optimizer
from chexnet_pl.settings import check_train_config
from chexnet_pl.train import train
from chexnet_pl.visualization.heatmaps import resolve_method


def tiny(tmp_path: Path, root: Path, *extra: str, experiment: str = "demo"):
    """The shipped train config, shrunk as the tests' runs are (composed, not trained)."""
    return compose_train_config(tmp_path / "run", [*tiny_overrides(root, experiment), *extra])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("evaluation.tta=hflp", r"evaluation.tta='hflp' .*use one of: none, hflip, tencrop"),
        ("evaluation.threshold=max", r"evaluation.threshold='max' .*use one of: youden, f1"),
        ("evaluation.precision=fp64", r"evaluation.precision='fp64' is not a precision"),
        ("+evaluation.boostrap=10", r"evaluation.boostrap is not a setting"),
        ("evaluation.calibrate=isotonic", r"evaluation.calibrate='isotonic' .*temperature, platt"),
        ("evaluation.calibration_bins=0", r"evaluation.calibration_bins=0 is out of range"),
        ("evaluation.figure_format=jpg", r"evaluation.figure_format='?jpg'? is not a valid setting; use one of: png, pdf, svg"),
        ("evaluation.subgroups=[sex,race]", r"evaluation.subgroups\[\]='race' .*sex, age, view"),
        ("evaluation.age_bands=[60,20]", r"evaluation.age_bands=\(60, 20\): give increasing"),
        ("callbacks.visualization.method=gradcm", r"visualization.method='gradcm' .*gradcam"),
        ("callbacks.visualization.n_images=-1", r"visualization.n_images=-1 is out of range"),
        ("model.optimizer.name=adamm", r"model.optimizer.name='adamm' .*adam, adamw, sgd"),
        ("model.scheduler.name=step", r"model.scheduler.name='step' .*plateau, cosine, none"),
        ("model.optimizer.lr=-1", r"model.optimizer.lr=-1 is out of range; .*\(0, inf\)"),
        ("+model.scheduler.paitence=2", r"model.scheduler.paitence is not a setting; did you mean "
                                        r"model.scheduler.patience\?"),
        ("model.scheduler.monitor=val/aurc", r"scheduler.monitor='val/aurc' .*\(did you mean "
                                             r"val/auroc\?\)"),
        ("callbacks.model_checkpoint.monitor=val/aurc", r"model_checkpoint.monitor='val/aurc' is "
                                                        r"not logged"),
        ("callbacks.model_checkpoint.mode=maximum", r"callbacks.model_checkpoint: .*mode"),
        ("model.backbone=densenet122", r"model.backbone='densenet122' .*densenet121"),
        ("data.split.method=random", r"data.split.method='random' .*official, patient, file"),
        ("data.num_workers=many", r"data.num_workers='many': give auto or a whole number"),
        ("+data.image_sise=64", r"data.image_sise is not a setting; did you mean data.image_size"),
        ("trainer.precision=fp64", r"trainer.precision='fp64' is not a precision"),
        ("+trainer.max_epoch=1", r"trainer.max_epoch is not a setting; did you mean "
                                 r"trainer.max_epochs"),
        ("evaluation.confidence=95", r"evaluation.confidence=95 is out of range"),
    ],
)  # fmt: skip
def test_a_bad_setting_stops_before_anything_is_built(tmp_path, synthetic_root, override, message):
    cfg = tiny(tmp_path, synthetic_root, override)
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not Path(cfg.paths.output_dir).exists()  # nothing written, nothing trained


def test_every_problem_is_reported_in_one_go(tmp_path, synthetic_root):
    cfg = tiny(tmp_path, synthetic_root, "data.root=/no/such/nih", "model.optimizer.lr=0",
               "evaluation.calibrate=plat", "evaluation.age_bands=[]", "trainer.precision=64bit",
               "callbacks.visualization.every_n_epochs=0", "init_from=/no/such.ckpt")  # fmt: skip
    with pytest.raises(ConfigError) as error:
        check_train_config(cfg)
    problems = error.value.problems
    assert len(problems) == 6, problems
    assert problems[0].startswith("data.root=/no/such/nih is not a folder")
    assert str(error.value).startswith("6 settings cannot be used:\n  - data.root=")
    for key in (
        "model.optimizer.lr=0",
        "evaluation.calibrate='plat'",
        "trainer.precision='64bit'",
        "callbacks.visualization.every_n_epochs=0",
        "init_from=/no/such.ckpt",
    ):
        assert any(p.startswith(key) for p in problems), (key, problems)  # fmt: skip


def test_an_empty_age_band_list_is_one_band(tmp_path, synthetic_root):
    """``evaluation.age_bands=[]`` is allowed: every age in one band (not a typo to catch)."""
    check_train_config(tiny(tmp_path, synthetic_root, "evaluation.age_bands=[]"))


def test_a_wrong_data_root_is_named_before_weights_are_fetched(tmp_path, monkeypatch):
    """Shipped recipe, ImageNet weights on: the data.root problem comes first, no download."""
    from chexnet_pl.models import backbones

    def no_download(*args, **kwargs):
        raise AssertionError("weights were fetched before data.root was checked")

    monkeypatch.setattr(backbones, "load_imagenet_weights", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    cfg = compose_train_config(
        tmp_path / "run", ["experiment=densenet121", "data.root=/nonexistent"]
    )
    assert cfg.model.pretrained is True
    with pytest.raises(ConfigError, match=r"^data.root=/nonexistent is not a folder; give the NIH"):
        train(cfg)


def test_cam_on_a_head_without_it_stops_before_training(tmp_path, synthetic_root):
    cfg = tiny(tmp_path, synthetic_root, "model.backbone=alexnet", "data.image_size=64",
               "callbacks.visualization.method=cam")  # fmt: skip
    with pytest.raises(ConfigError, match=r"method=cam: alexnet's head is .*method=gradcam"):
        train(cfg)
    assert not Path(cfg.paths.output_dir).exists()


def test_retrain_without_init_from_stops_before_anything_is_built(tmp_path, synthetic_root):
    cfg = tiny(tmp_path, synthetic_root, experiment="retrain")
    assert cfg.init_from is None  # train.yaml's null wins over a `???` in the experiment
    with pytest.raises(ConfigError, match=r"^init_from is required.*init_from=outputs/"):
        train(cfg)
    assert not Path(cfg.paths.output_dir).exists()


def test_init_from_and_ckpt_path_together_are_refused(tmp_path, synthetic_root):
    start = tmp_path / "start.ckpt"
    start.write_bytes(b"x")
    cfg = tiny(tmp_path, synthetic_root, f"init_from={start}", f"ckpt_path={start}")
    with pytest.raises(ConfigError, match=r"give init_from= .* or ckpt_path= .*, not both"):
        check_train_config(cfg)


def test_the_model_judges_its_own_settings_when_built_in_python():
    """The same judge for the config and for code: ``CheXNetModule`` builds ``ModelSettings``."""
    with pytest.raises(ConfigError) as error:
        make_model(optimizer={"betas": [0.9]}, scheduler={"factor": 2})
    assert error.value.problems == [
        "model.optimizer.betas=[0.9]: give two numbers, e.g. [0.9,0.999]",
        "model.scheduler.factor=2 is out of range; use a number in (0, 1)",
    ]
    settings = shipped("model", pretrained=False)
    del settings["optimizer"]["nesterov"]  # no default outside the YAML to fall back on
    with pytest.raises(ConfigError, match=r"^model.optimizer.nesterov is not given$"):
        CheXNetModule(**settings, class_names=["Mass", "No Finding"])


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
        "heat-map method": lambda: resolve_method(model.net, "gradcm"),
    }
    for name, failure in failures.items():
        with pytest.raises(ChexnetError):
            failure()
        with pytest.raises(SystemExit) as exit_info:
            run_or_exit(lambda cfg, failure=failure: failure(), None)
        assert exit_info.value.code == 2, name
