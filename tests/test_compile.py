"""``model.compile_mode`` and fused optimizers, on the CPU (the eager backend: inductor's compile
of DenseNet takes minutes there)."""

from __future__ import annotations

import logging

import pytest
import torch

from chexnet_pl.data.nih_table import class_names
from chexnet_pl.models.module import CheXNetModule, build_optimizer
from chexnet_pl.train import train


def test_fused_optimizers_only_where_asked_or_on_cuda():
    layer = torch.nn.Linear(4, 2)
    settings = {"name": "adam", "lr": 1e-3}
    assert not build_optimizer(layer.parameters(), settings).defaults["fused"]  # auto, CPU
    for name in ("adam", "adamw", "sgd"):
        optimizer = build_optimizer(layer.parameters(), {**settings, "name": name, "fused": True})
        assert optimizer.defaults["fused"] is True
        layer(torch.randn(3, 4)).sum().backward()
        before = layer.weight.detach().clone()
        optimizer.step()
        assert not torch.equal(before, layer.weight)
    with pytest.raises(ValueError, match=r"model.optimizer.fused='yes'; use auto, true or false"):
        build_optimizer(layer.parameters(), {**settings, "fused": "yes"})


def test_compile_mode_is_checked():
    with pytest.raises(ValueError, match=r"model.compile_mode='fast'; use one of"):
        CheXNetModule(class_names=class_names(), pretrained=False, compile_mode="fast")


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
