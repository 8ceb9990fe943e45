"""Runs that say where they are and which model they are of: train names its backbone, recipe,
labels, image size and checkpoint in its first and last lines, ``model.json`` and
``run_summary.json``; every command ends with one line naming its output folder and key files; a
run stopped by its settings or data before any work leaves no folder; ``predict out=`` holds the
command's log too."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from conftest import console_script, random_checkpoint
from omegaconf import OmegaConf

from chexnet_pl.command_runner import OutputFolderCheck, log_outputs, remove_unused_run_folder
from chexnet_pl.data.nih import NIHDataModule
from chexnet_pl.model_identity import ModelIdentity, paper_comparison

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
TINY = [
    "data.image_size=32", "data.batch_size=8", "data.eval_batch_size=16", "data.num_workers=0",
    "model.pretrained=false", "trainer.accelerator=cpu", "trainer.precision=32-true",
    "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2", "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
    "evaluation.bootstrap_samples=20", "callbacks.visualization.n_images=1",
]  # fmt: skip


def run(command: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*console_script(command), *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def log_lines(result: subprocess.CompletedProcess) -> list[str]:
    """The command's own log lines (Hydra's format), without their time stamps."""
    text = result.stdout + result.stderr
    return [line.split(" - ", 1)[1] for line in text.splitlines() if "][INFO] - " in line
            or "][ERROR] - " in line]  # fmt: skip


def test_a_run_folder_holding_only_what_precedes_work_is_removed(tmp_path, caplog):
    """The folder Hydra made for this run (and its new parents) goes when the run stops before
    any work; one that existed, or that holds a result, stays."""
    new = tmp_path / "outputs" / "train" / "day" / "time"
    OutputFolderCheck().on_run_start(OmegaConf.create({"hydra": {"run": {"dir": str(new)}}}))
    (new / ".hydra").mkdir()
    (new / "train.log").write_text("x")
    (new / "config_resolved.yaml").write_text("x")
    remove_unused_run_folder()
    assert not (tmp_path / "outputs").exists()
    kept = tmp_path / "kept"
    OutputFolderCheck().on_run_start(OmegaConf.create({"hydra": {"run": {"dir": str(kept)}}}))
    (kept / "checkpoints").mkdir()
    remove_unused_run_folder()
    assert (kept / "checkpoints").is_dir()
    existing = tmp_path / "existing"
    existing.mkdir()
    OutputFolderCheck().on_run_start(OmegaConf.create({"hydra": {"run": {"dir": str(existing)}}}))
    remove_unused_run_folder()
    assert existing.is_dir()
    (tmp_path / "k" / "a.csv").parent.mkdir()
    (tmp_path / "k" / "a.csv").write_text("x")
    with caplog.at_level(logging.INFO):
        log_outputs(tmp_path / "k", ["a.csv", "missing.csv", "*.csv"])
    assert caplog.records[-1].getMessage() == f"outputs in {tmp_path / 'k'} (a.csv, 1 *.csv)"


def test_paper_columns_only_for_densenet121_on_nihs_14_findings():
    paper = NIHDataModule.reference_auroc
    assert len(paper[0]) == 14
    assert paper_comparison("densenet121", paper) is None
    assert paper_comparison(None, paper) is None  # a predictions file: the model is not known
    assert "this model is densenet169" in paper_comparison("densenet169", paper)
    seven = (dict(list(paper[0].items())[:7]), float("nan"))  # reference_for: no mean of 7
    assert "scored on 7 of them" in paper_comparison("densenet121", seven)
    identity = ModelIdentity("resnet50", "resnet", "nih", tuple(paper[0]), 224, "r/best.ckpt")
    assert identity.line() == (
        "resnet50, recipe resnet, nih: 14 labels, 224 px, checkpoint r/best.ckpt"
    )
    assert json.loads(json.dumps(identity.to_json()))["label_set"] == "nih: 14 labels"


@pytest.mark.slow
def test_train_names_its_model_and_run_folder_and_compares_no_other_model_with_the_paper(
    tmp_path, synthetic_root
):
    """The issue's run: experiment=densenet169 on NIH. Its first line names the backbone and
    recipe, its last the run folder and best checkpoint; model.json and run_summary.json name
    the model; aucs.csv has no paper columns, and the console says why in one line."""
    result = run("train", "experiment=densenet169", f"data.root={synthetic_root}", *TINY,
                 cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = log_lines(result)
    (folder,) = (tmp_path / "outputs" / "train").glob("*/*")
    folder = folder.resolve()
    assert lines[0] == (
        f"training densenet169 (recipe densenet169) on nih at 32 px; run folder {folder}"
    )
    best = folder / "checkpoints" / "best.ckpt"
    assert lines[-1] == (
        f"run folder {folder}; best checkpoint {best}; model: densenet169, recipe densenet169, "
        "nih: 15 labels, 32 px"
    )
    model = json.loads((folder / "model.json").read_text())
    assert model["backbone"] == "densenet169" and model["recipe"] == "densenet169"
    assert model["image_size"] == 32 and model["checkpoint"] == str(best)
    assert model["label_set"] == "nih: 15 labels" and len(model["classes"]) == 15
    assert json.loads((folder / "run_summary.json").read_text())["model"] == model
    aucs = pd.read_csv(folder / "aucs.csv")
    assert "paper_auroc" not in aucs and "diff_vs_paper" not in aucs
    why = [line for line in lines if "no paper_auroc/diff_vs_paper" in line]
    assert why == [
        "no paper_auroc/diff_vs_paper columns: the CheXNet paper's AUROCs are DenseNet-121's, "
        "this model is densenet169"
    ]


@pytest.mark.slow
def test_stopped_runs_leave_no_folder_and_predict_out_holds_its_log(tmp_path, synthetic_root):
    """A wrong data.root, a missing ckpt: exit 2 and nothing under outputs/. predict with out=
    writes its log there (not under outputs/predict/), names the model beside its table, and
    ends naming the folder and its files."""
    stopped = [
        ("train", "experiment=densenet121", "data.root=/no/such/folder", *TINY),
        ("evaluate", "ckpt=/no/such/best.ckpt"),
        ("predict", "ckpt=/no/such/best.ckpt", f"image={synthetic_root}/images/x.png"),
    ]
    for command, *args in stopped:
        result = run(command, *args, cwd=tmp_path)
        assert result.returncode == 2, (command, result.stderr[-2000:])
        assert not (tmp_path / "outputs").exists(), (command, list(tmp_path.rglob("*")))
    run_folder = tmp_path / "run"
    checkpoint = random_checkpoint(run_folder / "checkpoints" / "best.ckpt", image_size=32,
                                   root=str(synthetic_root))  # fmt: skip
    image = sorted((synthetic_root / "images").iterdir())[0]
    out = tmp_path / "predicted"
    result = run("predict", f"ckpt={checkpoint}", f"image={image}", f"out={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "outputs").exists()
    assert (out / "predict.log").is_file() and (out / ".hydra").is_dir()
    assert "model: densenet121, recipe: defaults" in (out / "predict.log").read_text()
    assert json.loads((out / "model.json").read_text())["checkpoint"] == str(checkpoint)
    assert log_lines(result)[-1] == (
        f"outputs in {out} (predictions.csv, model.json, 1 *.png, predict.log)"
    )
