"""Labels are data: label lists matched, merged and relabelled; a NaN label masked in the loss and
left out of every metric; NIH's finding list known only to NIH's code; pooled datasets."""

from __future__ import annotations

import ast
import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_model
from sklearn.metrics import roc_auc_score

from chexnet_pl.config_defaults import shipped_data
from chexnet_pl.data.nih_table import class_names
from chexnet_pl.errors import ConfigError
from chexnet_pl.evaluation.auroc import bootstrap_auroc
from chexnet_pl.evaluation.calibration.report import calibration_table
from chexnet_pl.evaluation.report import choose_threshold, score_predictions
from chexnet_pl.evaluation.settings import EvaluationSettings
from chexnet_pl.evaluation.subgroups import score_subgroups
from chexnet_pl.label_sets import label_map_problems, match_labels, mean_row, relabel, union_labels
from chexnet_pl.models.metrics import PerClassAUROC

SRC = Path(__file__).resolve().parents[1] / "src" / "chexnet_pl"
# PadChest reads its labels onto NIH's findings by default (data.labels=nih): it names them.
NIH_CODE = {"data/nih_table.py", "data/nih.py", "data/synthetic.py", "data/padchest.py"}
LABEL_MAP = {"Effusion": "Pleural Effusion"}


def test_only_nih_code_imports_nihs_finding_list():
    importers = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "chexnet_pl.data.nih_table":
                if {"FINDINGS", "class_names", "PAPER_AUROC"} & {a.name for a in node.names}:
                    importers.append(str(path.relative_to(SRC)))
    assert set(importers) <= NIH_CODE, importers


def test_label_lists_match_merge_and_relabel():
    nih = ["Atelectasis", "Effusion", "Mass", "No Finding"]
    chexpert = ["Atelectasis", "Pleural Effusion", "Fracture", "No Finding"]
    assert match_labels(nih, chexpert, LABEL_MAP) == [
        ("Atelectasis", "Atelectasis"), ("Effusion", "Pleural Effusion"),
        ("No Finding", "No Finding"),
    ]  # fmt: skip
    assert match_labels(chexpert, nih, LABEL_MAP)[1] == ("Pleural Effusion", "Effusion")
    assert match_labels(nih, chexpert) == [("Atelectasis", "Atelectasis"),
                                           ("No Finding", "No Finding")]  # fmt: skip
    union = union_labels([nih, chexpert], LABEL_MAP)
    assert union == ["Atelectasis", "Effusion", "Mass", "Fracture", "No Finding"]
    rows = relabel(np.array([[1, 0, 1, 0]], np.float32), chexpert, union, LABEL_MAP)
    assert np.array_equal(rows, [[1, 0, np.nan, 1, 0]], equal_nan=True)
    assert (
        mean_row(union) == "Mean (4 findings)" and mean_row(class_names()) == "Mean (14 findings)"
    )


def test_a_missing_label_is_masked_in_the_loss():
    model = make_model(backbone="alexnet", class_names=["A", "B", "No Finding"])
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.3, 0.7, -2.0]])
    labels = torch.tensor([[1.0, float("nan"), 0.0], [float("nan"), 1.0, 1.0]])
    known = ~torch.isnan(labels)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[known], labels[known])
    assert torch.allclose(model._loss(logits, labels), expected)
    full = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    assert torch.allclose(
        model._loss(logits, full),
        torch.nn.functional.binary_cross_entropy_with_logits(logits, full),
    )


def _noisy(seed: int = 0, n: int = 300, classes: int = 3):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, classes)) < 0.3).astype(np.float64)
    scores = np.clip(labels * 0.3 + rng.random((n, classes)) * 0.7, 0, 1)
    masked = labels.copy()
    # not labelled: a quarter of all, and half the positives (uncertain ones, say)
    masked[
        (rng.random((n, classes)) < 0.25) | ((labels == 1) & (rng.random((n, classes)) < 0.5))
    ] = np.nan
    return scores, labels, masked


def test_a_missing_label_is_left_out_of_every_metric():
    scores, labels, masked = _noisy()
    names = ["A", "B", "No Finding"]
    known = ~np.isnan(masked[:, 0])
    expected = roc_auc_score(masked[known, 0], scores[known, 0])
    metric = PerClassAUROC(3)
    metric.update(torch.tensor(scores), torch.tensor(np.nan_to_num(masked, nan=-1)).int())
    assert metric.compute()[0].item() == pytest.approx(expected, abs=1e-6)
    table = score_predictions(scores, masked, np.arange(300), names, 50, 0, 0.95, [0.5] * 3)
    assert table.at["A", "auroc"] == pytest.approx(expected)
    assert table.at["A", "positives"] + table.at["A", "negatives"] == known.sum()
    # the bootstrap and the thresholds see the labelled images only
    samples = bootstrap_auroc(scores, masked, np.arange(300), 200, 0)
    assert not np.isnan(samples).any()
    assert samples[:, 0].mean() == pytest.approx(
        expected, abs=0.02
    )  # centred on the labelled AUROC
    as_negative = roc_auc_score(np.nan_to_num(masked[:, 0]), scores[:, 0])
    assert abs(samples[:, 0].mean() - as_negative) > 0.03  # not NaN counted as negative
    assert choose_threshold(scores[:, 0], masked[:, 0]) == choose_threshold(
        scores[known, 0], masked[known, 0]
    )
    calibration = calibration_table(scores, masked, names)
    reference = calibration_table(scores[known][:, :1], masked[known][:, :1], ["A"])
    assert calibration.at["A", "brier"] == pytest.approx(reference.at["A", "brier"])


def test_subgroups_leave_unlabelled_images_out():
    scores, labels, masked = _noisy(1)
    names = ["A", "B", "No Finding"]
    meta = pd.DataFrame({"Patient Gender": np.where(np.arange(300) % 2, "M", "F")},
                        index=[f"{i}.png" for i in range(300)])  # fmt: skip
    result = score_subgroups(scores, masked, np.arange(300), meta, names, [0.5] * 3,
                             dataclasses.replace(EvaluationSettings.from_config(None).subgroup_spec, attributes=("sex",), min_images=1, min_positives=1, underdiagnosis_threshold="youden"), 0)  # fmt: skip
    row = result.table.query("subgroup == 'F' and finding == 'A'").iloc[0]
    women = (np.arange(300) % 2 == 0) & ~np.isnan(masked[:, 0])
    assert row["auroc"] == pytest.approx(roc_auc_score(masked[women, 0], scores[women, 0]))
    assert row["positives"] + row["negatives"] == women.sum()
    no_finding_known = ~np.isnan(masked[:, 2]) & (masked[:, 2] < 0.5)
    assert result.underdiagnosis["images_with_finding"].sum() == no_finding_known.sum()


def test_pooled_datasets_share_one_label_set(synthetic_root, chexpert_root):
    from chexnet_pl.data.pooled import PooledDataModule

    datasets = {
        "nih": {"_target_": "chexnet_pl.data.nih.NIHDataModule", "root": str(synthetic_root)},
        "chexpert": {"_target_": "chexnet_pl.data.chexpert.CheXpertDataModule",
                     "root": str(chexpert_root)},
    }  # fmt: skip
    dm = PooledDataModule(**shipped_data("chexnet_pl.data.pooled.PooledDataModule", datasets=datasets,
        label_map=LABEL_MAP, image_size=32, num_workers=0, batch_size=4))  # fmt: skip
    dm.setup()
    assert len(dm.pathologies) == 21 and dm.pathologies[-1] == "No Finding"
    assert "Pleural Effusion" not in dm.pathologies and "Effusion" in dm.pathologies
    table, labels = dm.table, pd.DataFrame(dm.labels, columns=dm.pathologies)
    nih, chexpert = (
        (table["Dataset"] == "nih").to_numpy(),
        (table["Dataset"] == "chexpert").to_numpy(),
    )
    assert labels.loc[nih, "Fracture"].isna().all() and labels.loc[chexpert, "Hernia"].isna().all()
    assert labels.loc[nih, "Effusion"].notna().all()
    source = pd.read_csv(chexpert_root / "CheXpert-v1.0-small" / "valid.csv").set_index("Path")
    valid = chexpert & table["Image Index"].str.contains("/valid/").to_numpy()
    assert np.array_equal(labels.loc[valid, "Effusion"].to_numpy(),
                          source.loc[table.loc[valid, "Image Index"], "Pleural Effusion"].to_numpy())  # fmt: skip
    assert table["Patient ID"].str.match(r"^(nih|chexpert)/\d+$").all()
    assert dm.pos_weight().shape == (21,)
    assert dm.hparams["_target_"] == "chexnet_pl.data.pooled.PooledDataModule"
    assert isinstance(dm.hparams["datasets"], dict)


def _pooled(synthetic_root, chexpert_root, label_map, **settings):
    from chexnet_pl.data.pooled import PooledDataModule

    datasets = {
        "nih": {"_target_": "chexnet_pl.data.nih.NIHDataModule", "root": str(synthetic_root)},
        "chexpert": {"_target_": "chexnet_pl.data.chexpert.CheXpertDataModule",
                     "root": str(chexpert_root)},
    }  # fmt: skip
    return PooledDataModule(**shipped_data("chexnet_pl.data.pooled.PooledDataModule",
        datasets=datasets, label_map=label_map, image_size=32, num_workers=0, batch_size=4,
        **settings))  # fmt: skip


def test_label_map_entries_must_name_labels_of_both_sides():
    """Each entry joins a name of one list to a name of another (issue 29): a typo on either
    side is named with the closest label; an entry whose name every list has is not needed."""
    from chexnet_pl.label_sets import label_map_problems

    nih = class_names()
    chexpert = ["Atelectasis", "Pleural Effusion", "Lung Lesion", "No Finding"]
    sides = {"the model's outputs": nih, "the data's labels": chexpert}
    assert label_map_problems(LABEL_MAP, sides) == []
    assert label_map_problems(LABEL_MAP, {"a": nih, "b": nih}) == []  # internal: not needed
    assert label_map_problems({"Effusion": "Pleural Efusion"}, sides) == [
        "evaluation.label_map maps 'Effusion' (the model's outputs) to 'Pleural Efusion', which "
        "the data's labels do not have (did you mean 'Pleural Effusion'?)"
    ]
    # a key the model lacks
    (problem,) = label_map_problems({"Efusion": "Pleural Effusion"}, sides)
    assert problem.endswith("to 'Efusion', which the model's outputs do not have (did you mean "
                            "'Effusion'?)")  # fmt: skip
    (problem,) = label_map_problems({"Efusion": "Pleural Efusion"}, sides)
    assert "neither is in the model's outputs or the data's labels" in problem
    assert "'Efusion' (did you mean 'Effusion'?)" in problem


def test_pooling_refuses_a_label_map_typo(synthetic_root, chexpert_root, caplog):
    """``{Effusion: Pleural Efusion}``: before, 22 outputs (Effusion and Pleural Effusion apart).
    ``chexnet-train data=nih+chexpert ... --check`` says so in one line, exit 2."""
    from chexnet_pl.command_runner import run_command
    from chexnet_pl.train import check_config

    message = (
        "evaluation.label_map maps 'Effusion' (nih's labels) to 'Pleural Efusion', which "
        "chexpert's labels do not have (did you mean 'Pleural Effusion'?)"
    )
    with pytest.raises(ConfigError) as raised:
        _pooled(synthetic_root, chexpert_root, {"Effusion": "Pleural Efusion"})
    assert str(raised.value) == message

    def hydra_main():
        raise AssertionError("Hydra's main ran")

    with pytest.raises(SystemExit) as exit_info:
        run_command("train", hydra_main, ["data=nih+chexpert",
                    f"data.datasets.nih.root={synthetic_root}",
                    f"data.datasets.chexpert.root={chexpert_root}",
                    "evaluation.label_map={Effusion: Pleural Efusion}", "--check"],
                    check=check_config, doc=None)  # fmt: skip
    assert exit_info.value.code == 2
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [message]


def test_two_outputs_take_one_label_only_when_asked(synthetic_root, chexpert_root, caplog):
    """NIH's Mass and Nodule both onto CheXpert's Lung Lesion: refused by default (before: Nodule
    silently NaN for CheXpert's images); with label_map_shared both take its values. The pooled
    outputs are one log line at the start."""
    both = {**LABEL_MAP, "Mass": "Lung Lesion", "Nodule": "Lung Lesion"}
    with pytest.raises(ConfigError, match=r"sends 2 outputs \['Mass', 'Nodule'\] onto the one "
                       r"label 'Lung Lesion'; give evaluation.label_map_shared=true"):  # fmt: skip
        _pooled(synthetic_root, chexpert_root, both)
    with caplog.at_level(logging.INFO, logger="chexnet_pl.data.pooled"):
        dm = _pooled(synthetic_root, chexpert_root, both, label_map_shared=True)
    assert "Lung Lesion" not in dm.pathologies and len(dm.pathologies) == 20
    line = next(r.getMessage() for r in caplog.records if "outputs pooled" in r.getMessage())
    assert line.startswith("20 outputs pooled from nih, chexpert: ['Atelectasis', ")
    assert line.endswith("label map: Effusion <- chexpert's Pleural Effusion, Mass <- chexpert's "
                         "Lung Lesion, Nodule <- chexpert's Lung Lesion")  # fmt: skip
    dm.setup()
    labels = pd.DataFrame(dm.labels, columns=dm.pathologies)
    chexpert = (dm.table["Dataset"] == "chexpert").to_numpy()
    source = pd.read_csv(chexpert_root / "CheXpert-v1.0-small" / "valid.csv").set_index("Path")
    valid = chexpert & dm.table["Image Index"].str.contains("/valid/").to_numpy()
    lesion = source.loc[dm.table.loc[valid, "Image Index"], "Lung Lesion"].to_numpy()
    assert np.array_equal(labels.loc[valid, "Mass"].to_numpy(), lesion)
    assert np.array_equal(labels.loc[valid, "Nodule"].to_numpy(), lesion)


@pytest.mark.slow
def test_training_on_pooled_datasets(tmp_path, synthetic_root, chexpert_root):
    from conftest import compose_train_config, tiny_dataset_overrides

    from chexnet_pl.checkpoints.runs import load_run
    from chexnet_pl.train import train

    cfg = compose_train_config(
        tmp_path / "run",
        tiny_dataset_overrides("nih+chexpert", f"data.datasets.nih.root={synthetic_root}",
                               f"data.datasets.chexpert.root={chexpert_root}")
        + ["model.backbone=resnet18", "evaluation.subgroups=[dataset]"],
    )  # fmt: skip
    _, objects = train(cfg)
    run = load_run(objects["trainer"].checkpoint_callback.best_model_path, device="cpu")
    assert (
        run.model.class_names == objects["datamodule"].pathologies
        and len(run.model.class_names) == 21
    )
    aucs = pd.read_csv(tmp_path / "run" / "aucs.csv", index_col=0)
    test = objects["datamodule"].datasets["test"].table
    counted = aucs["positives"] + aucs["negatives"]
    assert counted["Hernia"] == (test["Dataset"] == "nih").sum()  # NIH's images only
    assert counted["Fracture"] == (test["Dataset"] == "chexpert").sum()  # CheXpert's only
    subgroups = pd.read_csv(tmp_path / "run" / "subgroups.csv")
    assert set(subgroups.query("attribute == 'dataset'")["subgroup"]) >= {"NIH", "CHEXPERT"}


@pytest.mark.slow  # over ~3 s: the slow tier keeps make test-fast under 3 min
def test_fine_tuning_on_another_label_set_starts_a_new_head(tmp_path):
    from chexnet_pl.data.uncertainty import ordered_labels
    from chexnet_pl.models.init_from import init_from_checkpoint

    source = make_model(backbone="alexnet", class_names=class_names(False))  # 14 NIH findings
    path = tmp_path / "nih.ckpt"
    torch.save({"state_dict": source.state_dict(), "hyper_parameters": dict(source.hparams)}, path)
    target = make_model(backbone="alexnet", class_names=ordered_labels(True))  # 14 CheXpert
    before = target.net.classifier.weight.detach().clone()
    init_from_checkpoint(target, path)
    assert torch.equal(target.net.classifier.weight, before)  # same shape, other labels: not copied
    body = [k for k in source.state_dict() if k.startswith("net.") and "classifier" not in k][0]
    assert torch.equal(target.state_dict()[body], source.state_dict()[body])


def test_a_synonym_the_data_has_no_label_for_is_unused_not_an_error():
    """The shipped ``Effusion: Pleural Effusion`` on SIIM's or RSNA's single label: no effusion
    label by any spelling, so the entry is not used there; a typo (a close name exists) and an
    output the model lacks are still refused."""
    sides = {
        "the model's outputs": ["Effusion", "Pneumothorax"],
        "the data's labels": ["Pneumothorax"],
    }
    assert label_map_problems({"Effusion": "Pleural Effusion"}, sides) == []
    typo = {"the model's outputs": ["Effusion"], "the data's labels": ["Pleural Effusion"]}
    (problem,) = label_map_problems({"Effusion": "Pleural Efusion"}, typo)
    assert "did you mean 'Pleural Effusion'" in problem
    (problem,) = label_map_problems({"Efusion": "Pleural Effusion"}, typo)
    assert "which the model's outputs do not have" in problem
