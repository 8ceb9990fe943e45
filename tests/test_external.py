"""External validation: a model scored on another dataset's labels through the label map, with its
internal AUROC beside; and predictions files scored against any dataset."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_config, make_model, random_checkpoint
from sklearn.metrics import roc_auc_score

from chexnet_pl.config_defaults import shipped_data
from chexnet_pl.data.chexpert import CheXpertDataModule
from chexnet_pl.data.nih_table import class_names
from chexnet_pl.errors import ChexnetError, ConfigError, DataError
from chexnet_pl.evaluate import evaluate

CHEXPERT = "chexnet_pl.data.chexpert.CheXpertDataModule"

SHARED = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Pneumonia",
          "Pneumothorax"]  # fmt: skip
QUICK = ["data.num_workers=0", "evaluation.bootstrap_samples=50", "evaluation.plots=false",
         "evaluation.subgroups=[]"]  # fmt: skip


def evaluate_on_chexpert(out: Path, source: str, chexpert_root: Path, *extra: str) -> dict:
    """``chexnet-evaluate <source> data=chexpert data.root=<root>`` (``source``: ckpt= or preds=)."""
    cfg = compose_config(
        "evaluate", out, source, "data=chexpert", f"data.root={chexpert_root}", *extra, *QUICK
    )
    return evaluate(cfg)


@pytest.fixture(scope="module")
def nih_run(tmp_path_factory, synthetic_root) -> Path:
    """An NIH checkpoint (random ResNet-18 at 32 px) in a run folder with its own aucs.csv."""
    run = tmp_path_factory.mktemp("nih_run")
    checkpoint = random_checkpoint(
        run / "checkpoints" / "best.ckpt", "resnet18", 32, root=str(synthetic_root)
    )
    internal = pd.DataFrame(
        {"auroc": np.linspace(0.70, 0.84, 15)}, index=pd.Index(class_names(), name="class")
    )
    internal.loc["Mean (14 findings)"] = 0.5  # a run's own mean, over its 14: not what is shown
    internal.to_csv(run / "aucs.csv")
    return checkpoint


def test_an_nih_checkpoint_evaluates_on_chexpert(tmp_path, nih_run, chexpert_root):
    out = tmp_path / "external"
    metrics = evaluate_on_chexpert(out, f"ckpt={nih_run}", chexpert_root)
    table = pd.read_csv(out / "aucs.csv", index_col=0)
    assert list(table.index) == [*SHARED, "Mean (7 findings)", "No Finding"]
    assert (
        "paper_auroc" not in table.columns
    )  # the CheXNet paper's values are NIH's, not CheXpert's
    # the AUROC of Effusion is that of NIH's output against CheXpert's Pleural Effusion, on valid.csv
    preds = pd.read_csv(out / "preds.csv")
    assert list(preds.columns[1:]) == [f"prob_{c}" for c in class_names()]  # every output kept
    valid = pd.read_csv(chexpert_root / "CheXpert-v1.0-small" / "valid.csv").set_index("Path")
    truth = valid.loc[preds["Image Index"], "Pleural Effusion"]
    assert table.at["Effusion", "auroc"] == pytest.approx(
        roc_auc_score(truth, preds["prob_Effusion"]), abs=1e-9
    )
    assert metrics["test/auroc"] == pytest.approx(table.loc[SHARED, "auroc"].mean(skipna=True))
    # internal beside external: the run's own values, its mean over the same 7 findings
    internal = pd.read_csv(nih_run.parent.parent / "aucs.csv", index_col=0)["auroc"]
    assert table.loc[SHARED, "internal_auroc"].tolist() == pytest.approx(internal[SHARED].tolist())
    assert table.at["Mean (7 findings)", "internal_auroc"] == pytest.approx(internal[SHARED].mean())
    difference = table["auroc"] - table["internal_auroc"]
    assert np.allclose(table["external_minus_internal"], difference, equal_nan=True)


def test_the_label_map_is_a_setting(tmp_path, nih_run, chexpert_root):
    out = tmp_path / "unmapped"
    evaluate_on_chexpert(out, f"ckpt={nih_run}", chexpert_root, "evaluation.label_map=null")
    table = pd.read_csv(out / "aucs.csv", index_col=0)
    assert "Effusion" not in table.index and "Mean (6 findings)" in table.index
    with pytest.raises(
        ChexnetError,
        match=r"another dataset \(CheXpertDataModule\) needs its folder: give data.root=",
    ):
        evaluate(compose_config("evaluate", out, f"ckpt={nih_run}", "data=chexpert", *QUICK))


@pytest.mark.parametrize(
    ("label_map", "message"),
    [
        ("{Effusion: Pleural Efusion}", r"maps 'Effusion' \(the model's outputs\) to 'Pleural "
         r"Efusion', which the data's labels do not have \(did you mean 'Pleural Effusion'\?\)"),
        # a key the checkpoint lacks
        ("{Efusion: Pleural Effusion}", r"maps 'Pleural Effusion' \(the data's labels\) to "
         r"'Efusion', which the model's outputs do not have \(did you mean 'Effusion'\?\)"),
        ("{Effusion: Pleural Effusion, Pleural_Thickening: Pleural Effusion}",
         r"sends 2 outputs \['Effusion', 'Pleural_Thickening'\] onto the one label 'Pleural "
         r"Effusion'; give evaluation.label_map_shared=true"),
    ],
)  # fmt: skip
def test_a_label_map_that_does_not_fit_is_refused(tmp_path, nih_run, chexpert_root, label_map,
                                                  message):  # fmt: skip
    """Before (issue 29): the typo left Effusion unscored without a word; a map onto one label
    scored one of the two outputs."""
    out = tmp_path / "refused"
    with pytest.raises(ConfigError, match=message):
        evaluate_on_chexpert(out, f"ckpt={nih_run}", chexpert_root,
                             f"evaluation.label_map={label_map}")  # fmt: skip
    assert not (out / "preds.csv").exists()  # refused before any prediction


def test_two_outputs_onto_one_label_when_asked(tmp_path, nih_run, chexpert_root, caplog):
    """``evaluation.label_map_shared=true``: Effusion and Pleural_Thickening are both scored
    against Pleural Effusion; the run's outputs are one log line before any prediction."""
    out = tmp_path / "shared"
    with caplog.at_level(logging.INFO, logger="chexnet_pl.evaluation.runner"):
        evaluate_on_chexpert(
            out, f"ckpt={nih_run}", chexpert_root, "evaluation.label_map_shared=true",
            "evaluation.label_map={Effusion: Pleural Effusion, Pleural_Thickening: Pleural Effusion}",
        )  # fmt: skip
    table = pd.read_csv(out / "aucs.csv", index_col=0)
    preds = pd.read_csv(out / "preds.csv")
    valid = pd.read_csv(chexpert_root / "CheXpert-v1.0-small" / "valid.csv").set_index("Path")
    truth = valid.loc[preds["Image Index"], "Pleural Effusion"]
    for output in ("Effusion", "Pleural_Thickening"):
        assert table.at[output, "auroc"] == pytest.approx(
            roc_auc_score(truth, preds[f"prob_{output}"]), abs=1e-9
        )
    (line,) = [r.getMessage() for r in caplog.records if "outputs against" in r.getMessage()]
    assert line.startswith("scoring 9 of the model's 15 outputs against the data's labels: ")
    assert (
        "label map: Effusion <-> Pleural Effusion, Pleural_Thickening <-> Pleural Effusion" in line
    )


def test_a_chexpert_checkpoint_evaluates_on_nih(tmp_path, synthetic_root, chexpert_root, caplog):
    names = CheXpertDataModule(**shipped_data(CHEXPERT, root=str(chexpert_root))).pathologies
    model = make_model(backbone="resnet18", class_names=names)
    path = tmp_path / "run" / "checkpoints" / "best.ckpt"
    path.parent.mkdir(parents=True)
    data = {"_target_": "chexnet_pl.data.chexpert.CheXpertDataModule", "root": str(chexpert_root),
            "image_size": 32}  # fmt: skip
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "datamodule_hyper_parameters": data}, path)  # fmt: skip
    out = tmp_path / "on_nih"
    with caplog.at_level(logging.INFO):
        evaluate(
            compose_config(
                "evaluate", out, f"ckpt={path}", "data=nih", f"data.root={synthetic_root}", *QUICK
            )  # fmt: skip
        )
    table = pd.read_csv(out / "aucs.csv", index_col=0)
    scored = ["Cardiomegaly", "Edema", "Consolidation", "Pneumonia", "Atelectasis",
              "Pneumothorax", "Pleural Effusion"]  # fmt: skip
    assert set(table.index) == {*scored, "Mean (7 findings)", "No Finding"}
    # The CheXNet paper's AUROCs are DenseNet-121's on NIH's 14 findings: a ResNet-18 on 7 of
    # them gets no paper columns, and the console says why in one line.
    assert "paper_auroc" not in table and "diff_vs_paper" not in table
    why = [
        r.getMessage() for r in caplog.records if "no paper_auroc/diff_vs_paper" in r.getMessage()
    ]
    assert len(why) == 1 and "this model is resnet18" in why[0] and "\n" not in why[0]
    assert json.loads((out / "model.json").read_text())["backbone"] == "resnet18"


def test_predictions_are_scored_against_any_dataset(tmp_path, chexpert_root):
    dm = CheXpertDataModule(
        **shipped_data(CHEXPERT, root=str(chexpert_root), num_workers=0, cache="off")
    )
    images = dm.read_labels()
    test = images.table["split"] == "test"
    rng = np.random.default_rng(0)
    preds = pd.DataFrame(rng.random((int(test.sum()), len(dm.pathologies))),
                         columns=[f"prob_{c}" for c in dm.pathologies])  # fmt: skip
    preds.insert(0, "Image Index", images.table.loc[test, "Image Index"].to_numpy())
    preds.to_csv(tmp_path / "preds.csv", index=False)
    out = tmp_path / "scored"
    evaluate_on_chexpert(out, f"preds={tmp_path / 'preds.csv'}", chexpert_root)
    table = pd.read_csv(out / "aucs.csv", index_col=0)
    edema = images.labels[test.to_numpy(), dm.pathologies.index("Edema")]
    assert table.at["Edema", "auroc"] == pytest.approx(roc_auc_score(edema, preds["prob_Edema"]))
    assert "Mean (13 findings)" in table.index
    preds.drop(columns=["prob_Edema"]).to_csv(tmp_path / "partial.csv", index=False)
    with pytest.raises(DataError, match=r"lacks 1 class column\(s\): \['prob_Edema'\]"):
        evaluate_on_chexpert(out, f"preds={tmp_path / 'partial.csv'}", chexpert_root)


def test_a_chexpert_checkpoints_labels_reach_predictions_heat_maps_and_serving(
    tmp_path, chexpert_root
):
    from chexnet_pl.predict import predict
    from chexnet_pl.serving.backends import load_backend

    names = CheXpertDataModule(**shipped_data(CHEXPERT, root=str(chexpert_root))).pathologies
    model = make_model(backbone="resnet18", class_names=names)
    path = tmp_path / "run" / "checkpoints" / "best.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "datamodule_hyper_parameters": {"image_size": 32}}, path)  # fmt: skip
    image = next((chexpert_root / "CheXpert-v1.0-small" / "valid").rglob("*.jpg"))
    out = predict(compose_config("predict", tmp_path / "predict", f"ckpt={path}",
                                 f"image={image}", "top_k=2"))  # fmt: skip
    table = pd.read_csv(out / "predictions.csv")
    assert list(table.columns[1:]) == [f"prob_{n}" for n in names]
    overlays = {p.name for p in out.rglob("*.png")}
    top = table.iloc[0, 1:].astype(float).nlargest(2).index.str.removeprefix("prob_")
    assert {f"view1_frontal_{n}.png" for n in top} <= overlays  # heat maps by label name
    _, card = load_backend(path, "torch")
    assert card["classes"] == names and list(card["thresholds"]) == names
