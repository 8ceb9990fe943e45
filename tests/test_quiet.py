"""Quiet output: Lightning's tips, device lines and FLOPs figures that read 0 are not shown, nor
metric objects as layers, the small-data logging warning, or a progress bar's cursor codes in a
redirected log; a prediction table says "unknown" where a label is unknown."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import make_model, tiny_overrides
from lightning_fabric.utilities.rank_zero import rank_zero_info
from pytorch_lightning.utilities.model_summary import summarize

from chexnet_pl.callbacks.startup_output import ParameterSummary, quiet_lightning
from chexnet_pl.data.nih_table import class_names
from chexnet_pl.visualization.figures import prediction_table, table_text


def test_lightning_tips_and_device_lines_are_dropped_and_other_lines_kept(caplog):
    quiet_lightning()
    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing [litlogger](...)")
        rank_zero_info("GPU available: False, used: False")
        rank_zero_info("TPU available: False, using: 0 TPU cores")
        rank_zero_info("`Trainer.fit` stopped: `max_epochs=1` reached.")
    assert "litlogger" not in caplog.text and "GPU available" not in caplog.text
    assert "TPU" not in caplog.text and "max_epochs=1" in caplog.text


def test_the_model_summary_lists_layers_not_metric_objects():
    model = make_model(backbone="resnet18", class_names=class_names())
    assert "val_auroc" in summarize(model, max_depth=1).layer_names  # Lightning's own lists them
    trainer = SimpleNamespace(strategy=None)
    # The network (its normaliser inside) and nothing else: no metric objects.
    assert ParameterSummary(max_depth=1)._summary(trainer, model).layer_names == ["net"]


def test_a_prediction_table_says_unknown_where_the_label_is_unknown():
    table = prediction_table([0.9, 0.2, 0.6], ["A", "B", "C"], [1.0, np.nan, 0.0])
    shown = table_text(table).set_index("finding")
    assert list(shown.loc[["A", "B", "C"], "truth"]) == ["yes", "unknown", "no"]
    assert list(shown.loc[["A", "B", "C"], "disagree"]) == ["", "", "✗"]  # unknown: no verdict
    assert table.set_index("finding").loc["B", "truth"] is pd.NA


@pytest.mark.slow  # trains, as a process whose output goes to a pipe
def test_a_redirected_training_log_is_quiet(synthetic_root, tmp_path):
    args = [a for a in tiny_overrides(synthetic_root) if "enable_" not in a]  # bar and summary on
    result = subprocess.run(
        [str(Path(sys.executable).parent / "chexnet-train"), *args,
         "trainer.log_every_n_steps=50",
         f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=900, env={**os.environ, "WANDB_MODE": "offline"},
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "\x1b[" not in output and "\r" not in output  # no bar: stderr is not a terminal
    assert "GPU available" not in output and "TPU available" not in output
    assert "log_every_n_steps" not in output and "smaller than the logging interval" not in output
    summary = output.split("model:", 1)[1].split("trainable parameters", 1)[0]
    assert "ChestXrayNet" in summary and "MeanMetric" not in summary and "AUROC" not in summary


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
