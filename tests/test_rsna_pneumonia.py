"""RSNA Pneumonia (data=rsna_pneumonia): the real labels table read whole, the one label and its
boxes, sex/age/view from the DICOMs' headers or the header table, the split, damaged tables,
training with the shipped config, and an NIH model scored on it through the label map."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import (
    SHARED_DATA,
    compose_config,
    compose_train_config,
    random_checkpoint,
    tiny_dataset_overrides,
)
from dicom_datasets import make_rsna_root, write_rsna_table

from chexnet_pl.config_defaults import shipped_data
from chexnet_pl.data.dicom.releases import header_table
from chexnet_pl.data.rsna_pneumonia import RSNAPneumoniaDataModule, read_rsna_labels
from chexnet_pl.errors import ChexnetError, DataError

TARGET = "chexnet_pl.data.rsna_pneumonia.RSNAPneumoniaDataModule"
META = SHARED_DATA / "rsna-pneumonia-meta"
LABELS_ZIP = META / "kaggle_stage_2_train_labels.csv.zip"
HEADERS = META / "kaggle_stage_2_train_images_dicom_headers.csv.gz"
SETTINGS = {"image_size": 32, "batch_size": 4, "num_workers": 0, "cache": "off"}


@pytest.fixture(scope="module")
def labels_zip() -> Path:
    if not LABELS_ZIP.is_file():
        pytest.skip(f"RSNA's real labels table not found at {LABELS_ZIP} (../shared/data is only "
                    "beside CI checkouts)")  # fmt: skip
    return LABELS_ZIP


@pytest.fixture(scope="module")
def rsna_root(tmp_path_factory, labels_zip) -> Path:
    """300 real images' rows (zipped, as released) and 64 px DICOMs; shared: read-only."""
    return make_rsna_root(tmp_path_factory.mktemp("rsna"), labels_zip, images=300)


def datamodule(root: Path, **overrides) -> RSNAPneumoniaDataModule:
    dm = RSNAPneumoniaDataModule(
        **shipped_data(TARGET, root=str(root), **{**SETTINGS, **overrides})
    )
    dm.setup()
    return dm


def test_the_real_table_reads_whole_with_the_counts_pandas_finds(labels_zip):
    images, boxes = read_rsna_labels(labels_zip)
    raw = pd.read_csv(labels_zip)  # independent reading: one row per box, or per negative image
    assert len(raw) == 30_227
    per_image = raw.groupby("patientId")["Target"].max()
    assert len(images) == len(per_image) == 26_684
    assert int(images["Target"].sum()) == int(per_image.sum()) == 6_012
    assert len(boxes) == int(raw["Target"].sum()) == 9_555
    assert list(images["patientId"]) == list(pd.unique(raw["patientId"]))
    expected = raw[raw["Target"] == 1][["x", "y", "width", "height"]].to_numpy()
    assert np.array_equal(boxes[["x", "y", "w", "h"]].to_numpy(), expected)
    assert set(boxes["Finding Label"]) == {"Lung Opacity"}


def test_the_real_header_table_gives_sex_age_and_view(labels_zip):
    if not HEADERS.is_file():
        pytest.skip(f"RSNA's header table not found at {HEADERS}")
    images, _ = read_rsna_labels(labels_zip)
    metadata = header_table(HEADERS, "PatientID", images["patientId"])
    assert metadata["Patient Gender"].value_counts().to_dict() == {"M": 15_166, "F": 11_518}
    assert metadata["View Position"].value_counts().to_dict() == {"PA": 14_511, "AP": 12_173}
    raw = pd.read_csv(HEADERS).set_index("PatientID")
    ages = raw.loc[images["patientId"], "PatientAge"].to_numpy(float)
    assert np.array_equal(metadata["Patient Age"].to_numpy(), ages)


def test_one_label_its_boxes_and_the_dicoms_headers(rsna_root):
    dm = datamodule(rsna_root, split={"fractions": [0.6, 0.2, 0.2]})
    assert dm.pathologies == ["Lung Opacity"] and dm.num_classes == 1
    raw = pd.read_csv(rsna_root / "stage_2_train_labels.csv.zip")
    truth = raw.groupby("patientId")["Target"].max()
    assert len(dm.table) == 300
    assert np.array_equal(dm.labels[:, 0], truth.loc[dm.table["Image Index"]].to_numpy(np.float32))
    assert len(dm.boxes) == int(raw["Target"].sum()) and dm.boxes["w"].gt(0).all()
    several = dm.boxes["Image Index"].value_counts()
    assert several.max() >= 2  # an image with several rows has several boxes
    import pydicom

    first = dm.table.iloc[0]
    header = pydicom.dcmread(first["path"], stop_before_pixels=True)
    assert (first["Patient Gender"], first["Patient Age"], first["View Position"]) == (
        header.PatientSex, float(header.PatientAge), header.ViewPosition)  # fmt: skip
    assert set(dm.table["View Position"]) == {"PA", "AP"}
    pa = datamodule(rsna_root, view_position="PA")
    assert set(pa.table["View Position"]) == {"PA"} and 0 < len(pa.table) < 300


@pytest.mark.slow  # over ~3 s: the slow tier keeps make test-fast under 3 min
def test_the_split_is_by_patient_id_and_seeded(rsna_root, tmp_path):
    dm = datamodule(rsna_root)
    sizes = dm.table["split"].value_counts()
    assert sizes.to_dict() == {"train": 210, "test": 60, "val": 30}
    again = datamodule(rsna_root)
    assert list(again.table["split"]) == list(dm.table["split"])
    other = datamodule(rsna_root, split={"seed": 1})
    assert list(other.table["split"]) != list(dm.table["split"])
    listed = dm.table[["Image Index", "split"]]
    listed.to_csv(tmp_path / "split.csv", index=False)
    from_file = datamodule(rsna_root, split={"method": "file", "file": str(tmp_path / "split.csv")})
    assert list(from_file.table["split"]) == list(dm.table["split"])
    with pytest.raises(ChexnetError, match=r"data.split.method='official': RSNA Pneumonia has no"):
        datamodule(rsna_root, split={"method": "official"})


@pytest.mark.parametrize("name", ["stage_2_train_labels.csv", "stage_2_train_labels.csv.gz"])
def test_plain_and_gzipped_tables_read_as_the_zip(tmp_path, rsna_root, name):
    root = Path(shutil.copytree(rsna_root, tmp_path / "rsna"))
    rows = pd.read_csv(root / "stage_2_train_labels.csv.zip")
    (root / "stage_2_train_labels.csv.zip").unlink()
    write_rsna_table(root / name, rows)
    dm = datamodule(root)
    assert list(dm.table["Image Index"]) == list(datamodule(rsna_root).table["Image Index"])


def test_the_header_table_replaces_reading_each_dicom(tmp_path, rsna_root):
    dm = datamodule(rsna_root)
    headers = pd.DataFrame({
        "PatientID": dm.table["Image Index"], "PatientSex": "F", "PatientAge": 33,
        "ViewPosition": "AP", "Filename": dm.table["Image Index"] + ".dcm",
    })  # fmt: skip
    headers.to_csv(tmp_path / "headers.csv.gz", index=False)
    from_table = datamodule(rsna_root, headers=str(tmp_path / "headers.csv.gz"))
    assert set(from_table.table["Patient Gender"]) == {"F"}
    assert set(from_table.table["Patient Age"]) == {33.0}
    pd.concat([headers, headers.head(1)]).to_csv(tmp_path / "twice.csv", index=False)
    with pytest.raises(DataError, match=r"twice.csv: PatientID '.*' is on lines \[2, 302\]"):
        datamodule(rsna_root, headers=str(tmp_path / "twice.csv"))


def _rewrite(change):
    def edit(root: Path) -> None:
        path = root / "stage_2_train_labels.csv.zip"
        rows = pd.read_csv(path, dtype={"patientId": str})
        path.unlink()
        write_rsna_table(path, change(rows))

    return edit


def _negative_row(rows: pd.DataFrame) -> int:
    return int(np.flatnonzero(rows["Target"].to_numpy() == 0)[0])


def _with_box_on_a_negative(rows: pd.DataFrame) -> pd.DataFrame:
    rows = rows.copy()
    rows.loc[rows.index[_negative_row(rows)], ["x", "y", "width", "height"]] = [10, 20, 30, 40]
    return rows


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_rewrite(lambda t: t.drop(columns=["Target"])),
         r"stage_2_train_labels.csv.zip lacks column\(s\) \['Target'\]"),
        (_rewrite(_with_box_on_a_negative),
         r"line \d+: [0-9a-f-]+ has Target 0 and a box \(x=10.0, y=20.0, width=30.0, height=40.0\)"),
        (_rewrite(lambda t: t.assign(Target=[2, *t["Target"][1:]])),
         r"line 2: Target is '2'; the release writes 1"),
        (_rewrite(lambda t: t.assign(width=np.where(t["Target"] == 1, 2000.0, np.nan))),
         r"line \d+: .* has Target 1 and the box \(.*width=2000.0.*not a box of positive size "
         r"within the 1024×1024 image"),
        (_rewrite(lambda t: t.assign(height=np.nan)),
         r"has Target 1 and the box \(.*height=nan\)"),
        (_rewrite(lambda t: pd.concat([t, t.iloc[[_negative_row(t)]]])),
         r"has Target 0 on more than one row \(lines \[\d+, 3\d\d\]\)"),
        (lambda root: (root / "stage_2_train_labels.csv.zip").write_bytes(b"PK\x03\x04junk"),
         r"cannot parse .*stage_2_train_labels.csv.zip as a CSV \(is it damaged\?\)"),
        (lambda root: (root / "stage_2_train_labels.csv.zip").unlink(),
         r"no stage_2_train_labels.csv \(nor .csv.zip, .csv.gz\) in .*data.csv="),
    ],
)  # fmt: skip
def test_damaged_tables_say_where(tmp_path, rsna_root, edit, message):
    root = Path(shutil.copytree(rsna_root, tmp_path / "rsna"))
    edit(root)
    with pytest.raises(DataError, match=message):
        datamodule(root)


@pytest.mark.slow  # over ~3 s: the slow tier keeps make test-fast under 3 min
def test_missing_dicoms_stop_the_run_or_are_skipped(tmp_path, rsna_root):
    root = Path(shutil.copytree(rsna_root, tmp_path / "rsna"))
    gone = sorted((root / "stage_2_train_images").glob("*.dcm"))[:2]
    for path in gone:
        path.unlink()
    with pytest.raises(DataError, match=r"2 of 300 images listed in .*csv.zip are not on disk"):
        datamodule(root, report_dir=str(tmp_path / "run"))
    skipped = datamodule(root, missing_images="skip", report_dir=str(tmp_path / "run"))
    assert len(skipped.table) == 298


@pytest.mark.slow
def test_two_batches_train_with_the_shipped_config(tmp_path, rsna_root):
    from chexnet_pl.checkpoints.runs import load_run
    from chexnet_pl.train import train

    cfg = compose_train_config(
        tmp_path / "run",
        tiny_dataset_overrides("rsna_pneumonia", f"data.root={rsna_root}")
        + ["model.backbone=resnet18", "test=true"],
    )
    assert cfg.data.split.method == "patient" and cfg.data.label_from_outputs
    metrics, objects = train(cfg)
    assert objects["trainer"].global_step == 2
    run = load_run(objects["trainer"].checkpoint_callback.best_model_path, device="cpu")
    assert run.model.class_names == ["Lung Opacity"]
    aucs = pd.read_csv(tmp_path / "run" / "aucs.csv", index_col=0)
    assert "Lung Opacity" in aucs.index and "test/auroc" in metrics


@pytest.mark.slow  # over ~3 s: the slow tier keeps make test-fast under 3 min
def test_an_nih_checkpoint_is_scored_on_the_max_of_its_opacity_outputs(
    tmp_path, synthetic_root, rsna_root
):
    from sklearn.metrics import roc_auc_score

    from chexnet_pl.evaluate import evaluate

    ckpt = random_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt", "resnet18", 32,
                             root=str(synthetic_root))  # fmt: skip
    out = tmp_path / "on_rsna"
    evaluate(compose_config("evaluate", out, f"ckpt={ckpt}", "data=rsna_pneumonia",
                            f"data.root={rsna_root}", "data.num_workers=0",
                            "evaluation.bootstrap_samples=20", "evaluation.plots=false",
                            "evaluation.subgroups=[sex,view]"))  # fmt: skip
    aucs = pd.read_csv(out / "aucs.csv", index_col=0)
    assert list(aucs.index)[0] == "Lung Opacity"
    preds = pd.read_csv(out / "preds.csv")
    sources = ["prob_Pneumonia", "prob_Consolidation", "prob_Infiltration"]
    assert np.allclose(preds["prob_Lung Opacity"], preds[sources].max(axis=1))
    raw = pd.read_csv(rsna_root / "stage_2_train_labels.csv.zip")
    truth = raw.groupby("patientId")["Target"].max().loc[preds["Image Index"]]
    assert aucs.at["Lung Opacity", "auroc"] == pytest.approx(
        roc_auc_score(truth, preds["prob_Lung Opacity"]), abs=1e-9
    )


def test_a_label_scored_against_the_maximum_of_several_outputs():
    from chexnet_pl.evaluation.external import add_combined, combined_outputs

    rule = {"Lung Opacity": ["Pneumonia", "Consolidation", "Infiltration"]}
    nih = ["Atelectasis", "Consolidation", "Infiltration", "Pneumonia", "No Finding"]
    assert combined_outputs(nih, ["Lung Opacity"], rule) == {
        "Lung Opacity": ["Pneumonia", "Consolidation", "Infiltration"]
    }
    # a model with an output of the label's own name (CheXpert's) is scored on it
    assert combined_outputs(["Lung Opacity", "Pneumonia"], ["Lung Opacity"], rule) == {}
    # only the listed outputs the model has; none: not scored; a label the data lacks: nothing
    assert combined_outputs(["Pneumonia", "Edema"], ["Lung Opacity"], rule) == {
        "Lung Opacity": ["Pneumonia"]
    }
    assert combined_outputs(["Edema"], ["Lung Opacity"], rule) == {}
    assert combined_outputs(nih, ["Pneumothorax"], rule) == {}
    preds = pd.DataFrame({"Image Index": ["a", "b"], "prob_Pneumonia": [0.1, 0.7],
                          "prob_Consolidation": [0.4, 0.2], "prob_Infiltration": [0.3, 0.6],
                          "prob_Edema": [0.9, 0.9]})  # fmt: skip
    combined = add_combined(preds, combined_outputs(nih, ["Lung Opacity"], rule))
    assert combined["prob_Lung Opacity"].tolist() == [0.4, 0.7]
    assert "prob_Lung Opacity" not in preds  # the input is left as it was


def test_one_labels_auroc_is_scored_during_training():
    import torch
    from sklearn.metrics import roc_auc_score

    from chexnet_pl.models.metrics import PerClassAUROC

    scores = torch.tensor([[0.1], [0.9], [0.4], [0.3], [0.8]])
    target = torch.tensor([[0], [1], [1], [-1], [0]])  # -1: not known, left out
    metric = PerClassAUROC(1)
    metric.update(scores, target)
    expected = roc_auc_score([0, 1, 1, 0], [0.1, 0.9, 0.4, 0.8])
    assert metric.compute().reshape(-1).tolist() == pytest.approx([expected])
    metric.reset()
    metric.update(scores[:1], target[:1])  # no positive: undefined
    assert torch.isnan(metric.compute()).all()


def test_a_predictions_file_of_nih_outputs_is_scored_on_rsna(tmp_path, rsna_root):
    from sklearn.metrics import roc_auc_score

    from chexnet_pl.data.nih_table import class_names
    from chexnet_pl.evaluate import evaluate

    dm = datamodule(rsna_root)
    test = dm.table[dm.table["split"] == "test"]
    rng = np.random.default_rng(0)
    preds = pd.DataFrame(rng.random((len(test), 15)), columns=[f"prob_{c}" for c in class_names()])
    preds.insert(0, "Image Index", test["Image Index"].to_numpy())
    preds.to_csv(tmp_path / "nih_preds.csv", index=False)
    out = tmp_path / "scored"
    evaluate(compose_config("evaluate", out, f"preds={tmp_path / 'nih_preds.csv'}",
                            "data=rsna_pneumonia", f"data.root={rsna_root}",
                            "evaluation.bootstrap_samples=20", "evaluation.plots=false",
                            "evaluation.subgroups=[]"))  # fmt: skip
    aucs = pd.read_csv(out / "aucs.csv", index_col=0)
    opacity = preds[["prob_Pneumonia", "prob_Consolidation", "prob_Infiltration"]].max(axis=1)
    raw = pd.read_csv(rsna_root / "stage_2_train_labels.csv.zip")
    truth = raw.groupby("patientId")["Target"].max().loc[preds["Image Index"]]
    assert aucs.at["Lung Opacity", "auroc"] == pytest.approx(roc_auc_score(truth, opacity))
