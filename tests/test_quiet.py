"""Quiet output: Lightning's tips and its FLOPs figures that read 0 are not shown."""

from __future__ import annotations

import logging

from conftest import make_model
from lightning_fabric.utilities.rank_zero import rank_zero_info
from pytorch_lightning.utilities.model_summary import summarize

from chexnet_pl.callbacks.quiet import ParameterSummary, quiet_lightning
from chexnet_pl.data.nih_table import class_names


def test_lightning_tips_are_dropped_and_other_lines_kept(caplog):
    quiet_lightning()
    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing [litlogger](...)")
        rank_zero_info("GPU available: False, used: False")
    assert "litlogger" not in caplog.text and "GPU available: False" in caplog.text


def test_model_summary_without_zero_flops(caplog):
    summary = summarize(make_model(backbone="resnet18", class_names=class_names()), max_depth=1)
    with caplog.at_level(logging.INFO):
        ParameterSummary.summarize(
            summary._get_summary_data(), summary.total_parameters, summary.trainable_parameters,
            summary.model_size, summary.total_training_modes, total_flops=0,
        )  # fmt: skip
    text = caplog.text
    assert "FLOPs" not in text
    assert "net" in text and "ChestXrayNet" in text and "11.2 M trainable parameters" in text
