"""chexnet-localize beyond NIH's boxes: VinDr-CXR's readers' boxes (each reader, and their union),
RSNA Pneumonia's boxes and SIIM-ACR's masks, scored from a tiny NIH checkpoint on roots built from
real rows of each release's table (../shared/data) with generated DICOMs at the releases' sizes;
IoU, IoBB, the mask hit rate and the readers' union against independent computations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA, compose_config, random_checkpoint
from dicom_datasets import make_rsna_root, make_siim_root, make_vindr_full_size_root

from chexnet_pl.errors import ChexnetError
from chexnet_pl.localization import T_VALUES, summarize
from chexnet_pl.localization.releases import (
    UNION,
    Reference,
    box_mask,
    references_for,
    score_reference,
    truth_mask,
)
from chexnet_pl.localize import localize

VINDR_CSV = SHARED_DATA / "vindr-cxr-meta" / "vinbigdata-train.csv.gz"
RSNA_ZIP = SHARED_DATA / "rsna-pneumonia-meta" / "kaggle_stage_2_train_labels.csv.zip"
SIIM_CSV = SHARED_DATA / "siim-pneumothorax-meta" / "siim-pneumothorax-train-rle.csv.gz"
# VinDr's labels that NIH's outputs score (chexnet_pl.data.vindr_cxr.NIH_LABEL_MAP's values).
VINDR_SCORED = {"Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly",
                "Consolidation": "Consolidation", "Pleural effusion": "Effusion",
                "Pulmonary fibrosis": "Fibrosis", "Infiltration": "Infiltration",
                "Pleural thickening": "Pleural_Thickening", "Pneumothorax": "Pneumothorax"}  # fmt: skip
COMMON = ["data.num_workers=0", "bootstrap_samples=50", "batch_size=4"]


def _need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path} not found (../shared/data is only beside CI checkouts)")
    return path


@pytest.fixture(scope="module")
def vindr_root(tmp_path_factory) -> Path:
    return make_vindr_full_size_root(tmp_path_factory.mktemp("vindr"), _need(VINDR_CSV), 24)


@pytest.fixture(scope="module")
def vindr_table(vindr_root) -> pd.DataFrame:
    return pd.read_csv(vindr_root / "train.csv")


@pytest.fixture(scope="module")
def rsna_root(tmp_path_factory) -> Path:
    return make_rsna_root(tmp_path_factory.mktemp("rsna"), _need(RSNA_ZIP), images=30, size=1024)


@pytest.fixture(scope="module")
def siim_root(tmp_path_factory) -> Path:
    return make_siim_root(tmp_path_factory.mktemp("siim"), _need(SIIM_CSV), images=30, size=1024,
                          patients=20)  # fmt: skip


@pytest.fixture(scope="module")
def nih_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("nih")
    return random_checkpoint(folder / "checkpoints" / "best.ckpt", "resnet18", 32,
                             root=str(folder))  # fmt: skip


def _run(tmp_path: Path, ckpt: Path, data: str, root: Path, *extra: str) -> pd.DataFrame:
    out = tmp_path / data
    table = localize(compose_config("localize", out, f"ckpt={ckpt}", f"data={data}",
                                    f"data.root={root}", *COMMON, *extra))  # fmt: skip
    stored = pd.read_csv(out / "localization.csv", index_col=0)
    assert list(stored.columns) == list(table.columns)
    return table


def _check_table(table: pd.DataFrame) -> None:
    """NIH's columns, the reference column, and every rate inside its interval."""
    rates = [*(f"acc_iou@{t}" for t in T_VALUES), *(f"acc_iobb@{t}" for t in T_VALUES),
             "pointing", "mask_hit", "heat_in_mask"]  # fmt: skip
    assert list(table.columns[:5]) == ["reference", "boxes", "images", "patients", "images_skipped"]
    assert {*rates, "pointing_chance"} <= set(table.columns)
    for rate in rates:
        assert ((table[f"{rate}_low"] <= table[rate] + 1e-12)
                & (table[rate] <= table[f"{rate}_high"] + 1e-12)).all(), rate  # fmt: skip


@pytest.mark.slow  # an ONNX export or a full-size DICOM root: kept out of make test-fast
def test_vindr_each_readers_boxes_and_their_union(tmp_path, nih_checkpoint, vindr_root,
                                                  vindr_table):  # fmt: skip
    table = _run(tmp_path, nih_checkpoint, "vindr_cxr", vindr_root)
    _check_table(table)
    found = vindr_table[vindr_table["class_name"].isin(VINDR_SCORED)]
    assert len(found), "the first images have boxes of findings NIH's outputs score"
    units = pd.read_csv(tmp_path / "vindr_cxr" / "localization_boxes.csv")
    readers = units[units["reference"] != UNION]
    assert len(readers) == len(found)  # one row per reader's box
    assert sorted(readers["reference"].unique()) == sorted(found["rad_id"].unique())
    unions = units[units["reference"] == UNION]
    assert len(unions) == len(found.drop_duplicates(["image_id", "class_name"]))
    assert set(units["Finding Label"]) == {VINDR_SCORED[c] for c in found["class_name"]}
    assert "union" in set(table["reference"]) and set(found["rad_id"]) <= set(table["reference"])
    row = table[(table.index == "All") & (table["reference"] == UNION)].iloc[0]
    assert row["boxes"] == len(unions) and row["images"] == found["image_id"].nunique()
    # images without a box of a finding are its negatives: counted, not scored
    effusion = table[(table.index == "Effusion") & (table["reference"] == UNION)]
    if len(effusion):
        positives = found.loc[found["class_name"] == "Pleural effusion", "image_id"].nunique()
        assert effusion["images_skipped"].iloc[0] == vindr_table["image_id"].nunique() - positives


@pytest.mark.slow  # over ~8 s: the slow tier keeps make test-fast under 3 min
def test_the_union_of_readers_is_the_union_of_their_boxes(vindr_root, vindr_table):
    from chexnet_pl.config_defaults import shipped_data
    from chexnet_pl.data.vindr_cxr import VinDrCXRDataModule

    dm = VinDrCXRDataModule(**shipped_data("chexnet_pl.data.vindr_cxr.VinDrCXRDataModule",
                                           root=str(vindr_root), num_workers=0))  # fmt: skip
    dm.setup()
    pairs = [(output, label) for label, output in VINDR_SCORED.items()]
    unions = [r for r in references_for(dm, pairs, set(dm.table["Image Index"]))
              if r.reference == UNION]  # fmt: skip
    assert unions
    for reference in unions:
        rows = vindr_table[(vindr_table["image_id"] == reference.image)
                           & (vindr_table["class_name"] == reference.label)]  # fmt: skip
        shape = (int(rows["y_max"].max()) + 40, int(rows["x_max"].max()) + 40)
        cy, cx = np.mgrid[: shape[0], : shape[1]] + 0.5  # pixel centres
        expected = np.zeros(shape, dtype=bool)
        for box in rows.itertuples():
            expected |= ((cx >= box.x_min) & (cx < box.x_max)
                         & (cy >= box.y_min) & (cy < box.y_max))  # fmt: skip
        assert rows["rad_id"].nunique() >= 1 and len(reference.boxes) == len(rows)
        np.testing.assert_array_equal(truth_mask(reference, shape, "x"), expected)


def test_rsna_boxes(tmp_path, nih_checkpoint, rsna_root):
    table = _run(tmp_path, nih_checkpoint, "rsna_pneumonia", rsna_root, "split=all")
    _check_table(table)
    labels = pd.read_csv(rsna_root / "stage_2_train_labels.csv.zip")
    positive = labels[labels["Target"] == 1]
    # Lung Opacity: NIH's max(Pneumonia, Consolidation, Infiltration)
    assert list(table.index) == ["Lung Opacity", "All"]
    row = table.loc["Lung Opacity"]
    assert row["reference"] == "box" and row["boxes"] == len(positive)
    assert row["images"] == positive["patientId"].nunique()
    assert row["images_skipped"] == labels["patientId"].nunique() - positive["patientId"].nunique()


def test_siim_masks(tmp_path, nih_checkpoint, siim_root):
    table = _run(tmp_path, nih_checkpoint, "siim_pneumothorax", siim_root)
    _check_table(table)
    rle = pd.read_csv(siim_root / "train-rle.csv", dtype=str)
    positive = rle.loc[rle[" EncodedPixels"].str.strip() != "-1", "ImageId"]
    row = table.loc["Pneumothorax"]
    assert row["reference"] == "mask" and row["boxes"] == positive.nunique()  # one region each
    assert row["images_skipped"] == rle["ImageId"].nunique() - positive.nunique()
    assert positive.value_counts().max() > 1, "an image with several masks is among them"


def test_a_mask_scored_against_itself(siim_root):
    from chexnet_pl.data.siim_pneumothorax import rle_decode

    rle = pd.read_csv(siim_root / "train-rle.csv", dtype=str)
    several = rle[rle[" EncodedPixels"].str.strip() != "-1"].groupby("ImageId").filter(
        lambda g: len(g) > 1)  # fmt: skip
    texts = tuple(several[" EncodedPixels"].iloc[:2])  # two rows of one image: their union
    image = several["ImageId"].iloc[0]
    unit = Reference(image, image, "Pneumothorax", "Pneumothorax", "mask", masks=texts,
                     region=True)  # fmt: skip
    truth = truth_mask(unit, (1024, 1024), "x")
    np.testing.assert_array_equal(truth, rle_decode(texts[0]) | rle_decode(texts[1]))
    scores = score_reference(truth.astype(np.float32), truth, unit, 0.5)
    assert scores["iou"] == 1.0 and scores["iobb"] == 1.0
    assert scores["mask_hit"] == 1.0 and scores["heat_in_mask"] == 1.0
    square = np.zeros((64, 64), dtype=bool)
    square[10:30, 20:40] = True  # convex: the map's maximum's centre is inside it
    box = Reference("a", "a", "F", "F", "mask", boxes=((20, 10, 20, 20),), region=True)
    assert score_reference(square.astype(float), square, box, 0.5)["pointing_hit"] == 1.0


def test_iou_and_iobb_of_known_boxes_against_an_independent_computation():
    heat = np.zeros((100, 100))
    heat[10:30, 20:60] = 1.0  # the map's region: the box x=20, y=10, w=40, h=20
    truth = (30.0, 15.0, 40.0, 30.0)  # x 30-70, y 15-45
    unit = Reference("a", "a", "F", "F", "box", boxes=(truth,))
    scores = score_reference(heat, box_mask(heat.shape, [truth]), unit, 0.5)
    inter = (60 - 30) * (30 - 15)
    assert scores["iou"] == pytest.approx(inter / (40 * 20 + 40 * 30 - inter))
    assert scores["iobb"] == pytest.approx(inter / (40 * 20))
    # the same by counting pixels
    region, mask = heat >= 0.5, box_mask(heat.shape, [truth])
    assert scores["iou"] == pytest.approx((region & mask).sum() / (region | mask).sum())
    assert scores["iobb"] == pytest.approx((region & mask).sum() / region.sum())
    assert scores["mask_hit"] == 1.0
    assert scores["heat_in_mask"] == pytest.approx((region & mask).sum() / region.sum())
    assert scores["pointing_hit"] == 1.0  # the plateau's centre (40, 20) is inside the box
    as_region = Reference("a", "a", "F", "F", "union", boxes=(truth,), region=True)
    assert score_reference(heat, mask, as_region, 0.5)["iou"] == pytest.approx(
        (region & mask).sum() / (region | mask).sum())  # fmt: skip


def test_the_summary_resamples_patients():
    units = pd.DataFrame({
        "Image Index": ["a1", "a2", "b1", "c1"], "patient": ["a", "a", "b", "c"],
        "Finding Label": "F", "reference": "box", "iou": [1.0, 1.0, 0.0, 0.0],
        "iobb": [1.0, 1.0, 0.0, 0.0], "pointing_hit": [1.0, 1.0, 0.0, 1.0],
        "pointing_chance": 0.1, "mask_hit": [1.0, 1.0, 0.0, 1.0], "heat_in_mask": 0.5,
    })  # fmt: skip
    table = summarize(units, samples=400, seed=0)
    row = table.loc["F"]
    assert row["boxes"] == 4 and row["images"] == 4 and row["patients"] == 3
    assert row["acc_iou@0.5"] == 0.5 and row["pointing"] == 0.75
    # patient a's two images are drawn together: no resample has exactly one of them, so the
    # rate's interval reaches 2/2 of a's images and 0 of b's and c's: 0 and 1 are both reached
    assert row["acc_iou@0.5_low"] == 0.0 and row["acc_iou@0.5_high"] == 1.0
    assert row["heat_in_mask_low"] == row["heat_in_mask_high"] == 0.5
    assert "pointing_low" not in summarize(units).columns  # no resamples: no interval


def test_bad_settings_are_refused_before_any_image(tmp_path, nih_checkpoint, siim_root):
    with pytest.raises(ChexnetError, match="split"):
        localize(compose_config("localize", tmp_path, f"ckpt={nih_checkpoint}",
                                "data=siim_pneumothorax", f"data.root={siim_root}",
                                "split=everything"))  # fmt: skip
    with pytest.raises(ChexnetError, match="data.root"):
        localize(compose_config("localize", tmp_path, f"ckpt={nih_checkpoint}",
                                "data=siim_pneumothorax"))  # fmt: skip


def test_nih_boxes_keep_their_table_with_the_reference_column(tmp_path, nih_sample):
    """NIH's box list: the same table, every box a ``box`` reference, NIH's patients resampled."""
    ckpt = random_checkpoint(tmp_path / "best.ckpt", "resnet18", 32, root=str(nih_sample))
    table = localize(compose_config("localize", tmp_path / "out", f"ckpt={ckpt}",
                                    f"data.root={nih_sample}", "bootstrap_samples=50"))  # fmt: skip
    boxes = pd.read_csv(nih_sample / "BBox_List_2017.csv")
    assert set(table["reference"]) == {"box"}
    assert table.loc["All", "boxes"] == len(boxes)
    assert table.loc["All", "images"] == boxes["Image Index"].nunique()
    patients = boxes["Image Index"].str.split("_").str[0].nunique()
    assert table.loc["All", "patients"] == patients
    assert table.loc["All", "pointing_low"] <= table.loc["All", "pointing"]
    assert table.loc["All", "pointing"] <= table.loc["All", "pointing_high"]


def test_boxes_outside_the_image_masks_of_another_size_and_data_without_either(
    tmp_path, nih_checkpoint, chexpert_root
):
    from chexnet_pl.errors import DataError

    outside = Reference("img1", "p", "Effusion", "Pleural effusion", "R8",
                        boxes=((1500.0, 200.0, 300.0, 300.0),))  # fmt: skip
    with pytest.raises(DataError, match=r"img1: the Pleural effusion box .*outside the image "
                                        r"x\.dicom \(1000×800 pixels\)"):  # fmt: skip
        truth_mask(outside, (800, 1000), "x.dicom")
    mask = Reference("img2", "p", "Pneumothorax", "Pneumothorax", "mask", masks=("5 10",),
                     region=True)  # fmt: skip
    with pytest.raises(DataError, match=r"img2: its masks are of a 1024×1024 image.*512×512"):
        truth_mask(mask, (512, 512), "y.dcm")
    with pytest.raises(ChexnetError, match="CheXpertDataModule has no boxes or masks"):
        localize(compose_config("localize", tmp_path, f"ckpt={nih_checkpoint}", "data=chexpert",
                                f"data.root={chexpert_root}"))  # fmt: skip
