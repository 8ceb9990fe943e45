"""``model.compile_mode`` and fused optimizers, on the CPU (the eager backend: inductor's compile
of DenseNet takes minutes there)."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import make_model

from chexnet_pl.config_defaults import shipped
from chexnet_pl.errors import ConfigError
from chexnet_pl.models.compiled import compile_options
from chexnet_pl.models.optim import build_optimizer, use_fused
from chexnet_pl.train import train


def test_fused_optimizers_only_where_asked_or_on_cuda():
    layer = torch.nn.Linear(4, 2)
    settings = shipped("model")["optimizer"]
    assert settings["fused"] == "auto"  # the shipped value, whose CUDA branch is below
    assert not build_optimizer(layer.parameters(), settings).defaults["fused"]  # auto, CPU
    for name in ("adam", "adamw", "sgd"):
        optimizer = build_optimizer(layer.parameters(), {**settings, "name": name, "fused": True})
        assert optimizer.defaults["fused"] is True
        layer(torch.randn(3, 4)).sum().backward()
        before = layer.weight.detach().clone()
        optimizer.step()
        assert not torch.equal(before, layer.weight)
    with pytest.raises(ConfigError, match=r"model.optimizer.fused='yes' is not a valid setting"):
        build_optimizer(layer.parameters(), {**settings, "fused": "yes"})


def test_auto_fuses_exactly_when_every_parameter_is_on_cuda():
    """The CUDA branch, driven on a CPU: ``use_fused`` decides from the parameters' devices."""
    assert use_fused("auto", {"cuda"}) is True
    assert use_fused("auto", {"cuda", "cpu"}) is None  # mixed: the optimizer's own choice
    assert use_fused("auto", {"cpu"}) is None and use_fused("auto", set()) is None
    assert use_fused(False, {"cuda"}) is False and use_fused(True, {"cpu"}) is True


def test_compile_options_follow_the_backend_and_mode():
    assert compile_options("inductor", "reduce-overhead") == {"mode": "reduce-overhead"}
    assert compile_options("inductor", "default") == {}
    assert compile_options("eager", "max-autotune") == {}  # other backends take no mode


def test_compile_mode_is_checked():
    with pytest.raises(ConfigError, match=r"model.compile_mode='fast' is not a valid setting"):
        make_model(compile_mode="fast")


@pytest.mark.slow
def test_compiled_training_reports_its_compile_time(make_cfg, caplog):
    cfg = make_cfg(
        "model.backbone=resnet18",
        "model.compile=true",
        "model.compile_backend=eager",
        "model.compile_mode=reduce-overhead",  # inductor's; other backends leave it aside
        "test=false",
        "trainer.limit_train_batches=2",
        "callbacks.visualization.n_images=0",
    )
    with caplog.at_level(logging.INFO):
        _, objects = train(cfg)
    model = objects["model"]
    assert model._train_forward is not None and model.compile_seconds > 0
    assert "compiling the training forward with torch.compile (backend eager" in caplog.text
    assert "first training step, compiling included:" in caplog.text
