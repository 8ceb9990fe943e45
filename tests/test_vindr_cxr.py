"""VinDr-CXR (data=vindr_cxr, Kaggle's VinBigData layout): the real train.csv read in full against
an independent pandas reading, the readers' vote, boxes, the split by image, bad tables, external
validation of an NIH model through the label map, and training on DICOMs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA, compose_config, random_checkpoint
from test_dicom import write_dicom

from chexnet_pl.config_defaults import shipped, shipped_data
from chexnet_pl.data.nih_table import IMAGE, PATIENT
from chexnet_pl.data.nih_table import class_names as nih_class_names
from chexnet_pl.data.synthetic import _render
from chexnet_pl.data.vindr_cxr import (
    CLASSES,
    NIH_LABEL_MAP,
    NO_FINDING,
    VinDrCXRDataModule,
    read_vindr_table,
)
from chexnet_pl.errors import ChexnetError, DataError
from chexnet_pl.label_sets import match_labels

TARGET = "chexnet_pl.data.vindr_cxr.VinDrCXRDataModule"
VINDR_CSV = SHARED_DATA / "vindr-cxr-meta" / "vinbigdata-train.csv.gz"
SETTINGS = {"image_size": 32, "batch_size": 4, "num_workers": 0, "cache": "off"}
IMAGES = 240  # real images (all their rows) in the miniature download
NIH_OF = {"Pleural effusion": "Effusion", "Pulmonary fibrosis": "Fibrosis",
          "Pleural thickening": "Pleural_Thickening"}  # fmt: skip


@pytest.fixture(scope="module")
def vindr_csv() -> Path:
    if not VINDR_CSV.is_file():
        pytest.skip(f"VinDr-CXR's real train.csv not found at {VINDR_CSV} (../shared/data is only "
                    "beside CI checkouts)")  # fmt: skip
    return VINDR_CSV


@pytest.fixture(scope="module")
def real_table(vindr_csv) -> pd.DataFrame:
    return pd.read_csv(vindr_csv)


def make_vindr_root(dest: Path, table: pd.DataFrame, images: int = IMAGES) -> Path:
    """``dest/train.csv`` with every row of the real table's first ``images`` images and a small
    DICOM per image at ``train/<image_id>.dicom`` (12-bit, with the synthetic lesions of the NIH
    findings its readers marked)."""
    rng = np.random.default_rng(0)
    ids = pd.unique(table["image_id"])[:images]
    part = table[table["image_id"].isin(ids)]
    dest.mkdir(parents=True, exist_ok=True)
    part.to_csv(dest / "train.csv", index=False)
    (dest / "train").mkdir(exist_ok=True)
    marked = part.groupby("image_id")["class_name"].agg(set)
    for image in ids:
        findings = [NIH_OF.get(c, c) for c in marked[image]]
        gray, _ = _render(64, [f for f in findings if f in nih_class_names()], rng)
        write_dicom(dest / "train" / f"{image}.dicom", gray.astype(np.uint16) * 16, bits_stored=12)
    return dest


@pytest.fixture(scope="module")
def vindr_root(tmp_path_factory, real_table) -> Path:
    return make_vindr_root(tmp_path_factory.mktemp("vindr"), real_table)


def datamodule(root: Path, **overrides) -> VinDrCXRDataModule:
    dm = VinDrCXRDataModule(**shipped_data(TARGET, root=str(root), **{**SETTINGS, **overrides}))
    dm.setup()
    return dm


def independent_labels(table: pd.DataFrame, vote: str) -> pd.DataFrame:
    """Per image and class, positive by the readers' vote, read apart from the module."""
    marks = table[table["class_name"] != "No finding"].drop_duplicates(
        ["image_id", "rad_id", "class_name"]
    )
    votes = pd.crosstab(marks["image_id"], marks["class_name"]).reindex(
        index=pd.unique(table["image_id"]), columns=list(CLASSES), fill_value=0
    )
    readers = table.groupby("image_id")["rad_id"].nunique().reindex(votes.index)
    positive = votes.ge(1) if vote == "any" else votes.mul(2).gt(readers, axis=0)
    positive["No finding"] = ~positive.any(axis=1)
    return positive


@pytest.mark.parametrize("vote", ["any", "majority"])
def test_the_real_table_reads_whole_and_counts_as_pandas_does(vindr_csv, real_table, vote):
    table = read_vindr_table(vindr_csv)
    assert len(table) == 67_914 and table["image_id"].nunique() == 15_000
    assert (table.groupby("image_id")["rad_id"].nunique() == 3).all()  # 3 readers each
    assert table["rad_id"].nunique() == 17
    assert table["class_name"].value_counts()[["No finding", "Cardiomegaly"]].tolist() == [
        31_818, 5_427,
    ]  # fmt: skip
    dm = VinDrCXRDataModule(**shipped_data(TARGET, root=str(vindr_csv.parent), csv=str(vindr_csv),
                                           reader_vote=vote, **SETTINGS))  # fmt: skip
    images = dm.read_labels()
    assert len(images.table) == 15_000 and set(images.table["readers"]) == {3}
    expected = independent_labels(real_table, vote).loc[images.table[IMAGE]]
    assert dm.pathologies == [*CLASSES, NO_FINDING]
    np.testing.assert_array_equal(images.labels, expected[dm.pathologies].to_numpy(np.float32))
    if vote == "any":  # every reader said No finding on 10,606 images (31,818 / 3)
        assert images.labels[:, -1].sum() == 10_606
    # boxes kept: one per finding row, with its reader
    assert len(dm.boxes) == 67_914 - 31_818
    assert dm.boxes[["x_min", "y_min", "x_max", "y_max"]].notna().all().all()
    # no patient id: each image is its own, and the split is by image
    assert (images.table[PATIENT] == images.table[IMAGE]).all()
    assert images.table["split"].value_counts().to_dict() == {"train": 10_500, "test": 3_000,
                                                              "val": 1_500}  # fmt: skip


def test_the_datamodule_reads_the_dicoms(vindr_root, real_table):
    dm = datamodule(vindr_root)
    assert len(dm.table) == IMAGES and all(p.endswith(".dicom") for p in dm.table["path"])
    sample = dm.datasets["train"][0]
    assert tuple(sample["img"].shape) == (1, 32, 32) and sample["lab"].shape == (15,)
    assert dm.reader_vote == "majority"
    any_vote = datamodule(vindr_root, reader_vote="any")
    assert (any_vote.labels[:, :-1] >= dm.labels[:, :-1]).all()  # any ⊇ majority
    assert any_vote.labels[:, :-1].sum() > dm.labels[:, :-1].sum()
    boxes = dm.boxes[dm.boxes["image_id"] == dm.table[IMAGE].iloc[0]]
    rows = real_table[(real_table["image_id"] == dm.table[IMAGE].iloc[0])
                      & (real_table["class_name"] != "No finding")]  # fmt: skip
    assert len(boxes) == len(rows)


def _edit(tmp_path: Path, vindr_root: Path, edit) -> Path:
    root = Path(shutil.copytree(vindr_root, tmp_path / "vindr"))
    table = pd.read_csv(root / "train.csv", dtype=str)
    edit(table)
    table.to_csv(root / "train.csv", index=False)
    return root


def _set(column: str, row: int, value):
    def edit(table: pd.DataFrame) -> None:
        table.loc[row, column] = value

    return edit


def _first_finding(table: pd.DataFrame) -> int:
    return int(np.flatnonzero((table["class_name"] != "No finding").to_numpy())[0])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set("class_name", 3, "Tuberculosis"), r"line 5: class_name is 'Tuberculosis'"),
        (_set("class_id", 0, "3"), r"line 2: class_id '3' is not 'No finding'"),
        (lambda t: t.drop(columns=["rad_id"], inplace=True), r"lacks column\(s\) \['rad_id'\]"),
        (
            lambda t: t.__setitem__("x_max", t["x_max"].where(t.index != _first_finding(t), "")),
            r"line \d+: .* has no usable box",
        ),
        (_set("rad_id", 1, ""), r"line 3: empty rad_id"),
    ],
    ids=["unknown-class", "wrong-class-id", "missing-column", "no-box", "no-reader"],
)
def test_bad_tables_say_where_and_what(tmp_path, vindr_root, edit, message):
    root = _edit(tmp_path, vindr_root, edit)
    with pytest.raises(DataError, match=message) as error:
        datamodule(root)
    assert str(root / "train.csv") in str(error.value)


def test_bad_settings_and_a_missing_table(tmp_path, vindr_root):
    with pytest.raises(ChexnetError, match="data.reader_vote"):
        datamodule(vindr_root, reader_vote="unanimous")
    with pytest.raises(ChexnetError, match="data.split.method"):
        datamodule(vindr_root, split={"method": "patient"})
    with pytest.raises(DataError, match="no train.csv"):
        datamodule(tmp_path)


def test_the_shipped_label_map_pairs_nih_outputs_with_vindr_labels():
    from chexnet_pl.evaluation.external import label_map_for

    label_map = label_map_for(shipped("evaluation", "default")["label_map"], VinDrCXRDataModule)
    pairs = match_labels(nih_class_names(), [*CLASSES, NO_FINDING], label_map)
    assert dict(pairs) == NIH_LABEL_MAP


def test_an_nih_checkpoint_evaluates_on_vindr(tmp_path, synthetic_root, vindr_root):
    from chexnet_pl.evaluate import evaluate

    ckpt = random_checkpoint(tmp_path / "nih" / "checkpoints" / "best.ckpt", "resnet18", 32,
                             root=str(synthetic_root))  # fmt: skip
    out = tmp_path / "external"
    evaluate(compose_config(
        "evaluate", out, f"ckpt={ckpt}", "data=vindr_cxr", f"data.root={vindr_root}",
        "data.num_workers=0", "evaluation.bootstrap_samples=20", "evaluation.plots=false",
        "evaluation.subgroups=[]",
    ))  # fmt: skip
    table = pd.read_csv(out / "aucs.csv", index_col=0)
    scored = [n for n in NIH_LABEL_MAP if n != "No Finding"]
    assert list(table.index) == [*scored, f"Mean ({len(scored)} findings)", "No Finding"]
    preds = pd.read_csv(out / "preds.csv").set_index("Image Index")
    dm = datamodule(vindr_root)
    test = dm.table["split"] == "test"
    truth = pd.Series(dm.labels[test.to_numpy(), dm.pathologies.index("Pleural effusion")],
                      index=dm.table.loc[test, IMAGE])  # fmt: skip
    if 0 < truth.sum() < len(truth):
        from sklearn.metrics import roc_auc_score

        assert table.at["Effusion", "auroc"] == pytest.approx(
            roc_auc_score(truth, preds.loc[truth.index, "prob_Effusion"]), abs=1e-9
        )


@pytest.mark.slow
def test_training_two_batches_with_the_shipped_defaults(tmp_path, vindr_root):
    from conftest import compose_train_config, tiny_dataset_overrides

    from chexnet_pl.checkpoints.runs import load_run
    from chexnet_pl.train import train

    cfg = compose_train_config(
        tmp_path / "run",
        tiny_dataset_overrides("vindr_cxr", f"data.root={vindr_root}")
        + ["data.cache=off", "model.backbone=resnet18"],
    )
    assert cfg.trainer.limit_train_batches == 2 and cfg.data.reader_vote == "majority"
    metrics, objects = train(cfg)
    assert objects["trainer"].global_step == 2
    run = load_run(objects["trainer"].checkpoint_callback.best_model_path, device="cpu")
    assert run.model.class_names == [*CLASSES, NO_FINDING]
    assert run.data_settings["_target_"] == TARGET
    assert "test/auroc" in metrics


def test_prepare_caches_the_dicoms_the_datamodule_then_reads(tmp_path, vindr_root):
    from chexnet_pl.data.prepare import build_cache

    root = Path(shutil.copytree(vindr_root, tmp_path / "vindr"))
    build_cache(root, size=32, workers=1, progress=False)
    cached = datamodule(root, cache="required")
    assert cached.image_cache is not None and len(cached.table) == IMAGES
    files = datamodule(root)
    sample, direct = cached.datasets["val"][0], files.datasets["val"][0]
    assert sample["name"] == direct["name"]
    assert (sample["img"].float() - direct["img"].float()).abs().max() < 0.05
