"""SIIM-ACR Pneumothorax (data=siim_pneumothorax): Kaggle's relative, column-major RLE both ways,
the real RLE table read whole, DICOMs found by name in the release's nested tree, the label and
its masks, the split by the headers' patient, damaged tables, and training with the shipped
config."""

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
from dicom_datasets import make_siim_root

from chexnet_pl.config_defaults import shipped_data
from chexnet_pl.data.siim_pneumothorax import (
    SIIMPneumothoraxDataModule,
    read_siim_rle,
    rle_decode,
    rle_encode,
)
from chexnet_pl.errors import ChexnetError, DataError

TARGET = "chexnet_pl.data.siim_pneumothorax.SIIMPneumothoraxDataModule"
RLE_CSV = SHARED_DATA / "siim-pneumothorax-meta" / "siim-pneumothorax-train-rle.csv.gz"
SETTINGS = {"image_size": 32, "batch_size": 4, "num_workers": 0, "cache": "off"}


@pytest.fixture(scope="module")
def rle_csv() -> Path:
    if not RLE_CSV.is_file():
        pytest.skip(f"SIIM-ACR's real RLE table not found at {RLE_CSV} (../shared/data is only "
                    "beside CI checkouts)")  # fmt: skip
    return RLE_CSV


@pytest.fixture(scope="module")
def siim_root(tmp_path_factory, rle_csv) -> Path:
    """300 real images' rows and 64 px DICOMs nested by study/series, 150 patients with two
    images each; shared: read-only."""
    return make_siim_root(tmp_path_factory.mktemp("siim"), rle_csv, images=300, patients=150)


def datamodule(root: Path, **overrides) -> SIIMPneumothoraxDataModule:
    dm = SIIMPneumothoraxDataModule(
        **shipped_data(TARGET, root=str(root), **{**SETTINGS, **overrides})
    )
    dm.setup()
    return dm


def test_the_rle_is_relative_and_column_major_on_a_hand_made_mask():
    mask = np.zeros((4, 3), dtype=bool)  # 4 rows, 3 columns: not square, so transposing shows
    mask[1:3, 0] = True  # column 0, rows 1-2: pixels 1, 2 (column-major)
    mask[3, 0] = mask[0, 1] = True  # pixel 3 (end of column 0) and pixel 4 (top of column 1)
    mask[2, 2] = True  # pixel 10
    # runs: pixels 1..4 (start 1, length 4), then pixel 10 (5 pixels after the run's end at 5)
    assert rle_encode(mask) == "1 4 5 1"
    assert np.array_equal(rle_decode("1 4 5 1", 4, 3), mask)
    assert not np.array_equal(rle_decode("1 4 5 1", 3, 4), mask.T)  # rows/columns not swapped
    decoded = rle_decode("1 4 5 1", 4, 3)
    assert decoded[0, 1] and not decoded[1, 1]  # pixel 4 tops column 1 (row-major: row 1, col 1)
    assert rle_encode(np.zeros((4, 3), bool)) == "-1" and not rle_decode("-1", 4, 3).any()
    rng = np.random.default_rng(0)
    for _ in range(20):
        random = rng.random((37, 23)) < 0.3
        assert np.array_equal(rle_decode(rle_encode(random), 37, 23), random)
    full = np.ones((4, 3), dtype=bool)
    assert rle_encode(full) == "0 12" and rle_decode("0 12", 4, 3).all()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 4 5", r"3 numbers, an odd count"),
        ("1 4 5 3", r"run 2 ends at pixel 13, past the end of the 4×3 image \(12 pixels\)"),
        ("0 13", r"run 1 ends at pixel 13, past the end"),
        ("1 x", r"'x' is not a whole number"),
        ("-2 3", r"a negative start \(-2\)"),
        ("1 0", r"a run of length 0"),
    ],
)
def test_malformed_rle_says_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        rle_decode(text, 4, 3)


def test_the_real_table_reads_whole_with_the_counts_pandas_finds(rle_csv):
    images, masks = read_siim_rle(rle_csv)
    raw = pd.read_csv(rle_csv)  # independent reading; the header really has the leading space
    assert list(raw.columns) == ["ImageId", " EncodedPixels"] and len(raw) == 12_954
    positive = raw[" EncodedPixels"].str.strip() != "-1"
    assert len(images) == raw["ImageId"].nunique() == 12_047
    assert int(images["Pneumothorax"].sum()) == raw.loc[positive, "ImageId"].nunique() == 2_669
    assert len(masks) == int(positive.sum())
    first = masks.iloc[0]
    decoded = rle_decode(first["EncodedPixels"])
    assert decoded.shape == (1024, 1024) and rle_encode(decoded) == first["EncodedPixels"]


def test_the_label_masks_and_headers_from_the_nested_tree(siim_root):
    dm = datamodule(siim_root)
    assert dm.pathologies == ["Pneumothorax"] and len(dm.table) == 300
    assert dm.table["path"].str.contains("/dicom-images-train/").all()
    raw = pd.read_csv(siim_root / "train-rle.csv")
    positive = raw.groupby("ImageId")[" EncodedPixels"].agg(lambda v: (v.str.strip() != "-1").any())
    truth = positive.loc[dm.table["Image Index"]].to_numpy(np.float32)
    assert np.array_equal(dm.labels[:, 0], truth) and truth.sum() > 10
    several = dm.masks["Image Index"].value_counts()
    image = several.index[0]
    assert several.iloc[0] >= 2  # an image with several masks has several rows: their union
    rows = raw.loc[raw["ImageId"] == image, " EncodedPixels"]
    union = np.logical_or.reduce([rle_decode(t) for t in rows])
    assert np.array_equal(dm.mask(image), union) and union.sum() > rle_decode(rows.iloc[0]).sum()
    assert not dm.mask(dm.table.loc[dm.labels[:, 0] == 0, "Image Index"].iloc[0]).any()
    assert set(dm.table["Patient Gender"]) == {"M", "F"} and dm.table["Patient Age"].notna().all()
    assert dm.table["Patient ID"].str.startswith("patient-").all()


def test_the_split_keeps_each_patients_images_together(siim_root):
    dm = datamodule(siim_root)
    assert dm.table["Patient ID"].nunique() == 150
    assert dm.table.groupby("Patient ID")["split"].nunique().max() == 1
    assert set(dm.table["split"]) == {"train", "val", "test"}
    by_image = datamodule(siim_root, headers=False)
    assert (by_image.table["Patient ID"] == by_image.table["Image Index"]).all()
    with pytest.raises(ChexnetError, match=r"data.split.method='official': SIIM-ACR"):
        datamodule(siim_root, split={"method": "official"})


def test_two_files_of_one_name_are_refused_naming_both(tmp_path, siim_root):
    root = Path(shutil.copytree(siim_root, tmp_path / "siim"))
    one = sorted((root / "dicom-images-train").rglob("*.dcm"))[0]
    copy = root / "elsewhere" / one.name
    copy.parent.mkdir()
    shutil.copy(one, copy)
    with pytest.raises(DataError, match=rf"two DICOMs named {one.name}: .*{one.parent.name}.* and "
                       r".*elsewhere"):  # fmt: skip
        datamodule(root)


def _rewrite(change):
    def edit(root: Path) -> None:
        path = root / "train-rle.csv"
        change(pd.read_csv(path, dtype=str)).to_csv(path, index=False)

    return edit


def _first_mask_row(rows: pd.DataFrame) -> int:
    return int(np.flatnonzero((rows[" EncodedPixels"].str.strip() != "-1").to_numpy())[0])


def _set_first_mask(text: str):
    def change(rows: pd.DataFrame) -> pd.DataFrame:
        rows = rows.copy()
        rows.iloc[_first_mask_row(rows), 1] = text
        return rows

    return change


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_rewrite(_set_first_mask("5 10 20")),
         r"train-rle.csv, line \d+: the mask of [\d.]+ \('5 10 20'\) is not a relative RLE of a "
         r"1024×1024 image: 3 numbers, an odd count"),
        (_rewrite(_set_first_mask("1048570 10")),
         r"line \d+: the mask of .* run 1 ends at pixel 1048580, past the end of the 1024×1024"),
        (_rewrite(lambda t: t.drop(columns=[" EncodedPixels"])),
         r"train-rle.csv lacks column\(s\) \['EncodedPixels'\]"),
        (_rewrite(lambda t: pd.concat([t, t.iloc[[_first_mask_row(t)]].assign(
            **{" EncodedPixels": "-1"})])),
         r"train-rle.csv: [\d.]+ has both -1 \(no pneumothorax\) and a mask \(lines \[\d+, 3\d\d\]\)"),
        (_rewrite(lambda t: t.assign(**{" EncodedPixels": ["", *t[" EncodedPixels"][1:]]})),
         r"empty 'EncodedPixels' on line\(s\) \[2\]; write -1"),
        (lambda root: (root / "train-rle.csv").unlink(), r"no train-rle.csv .* data.csv="),
    ],
)  # fmt: skip
def test_damaged_tables_say_where(tmp_path, siim_root, edit, message):
    root = Path(shutil.copytree(siim_root, tmp_path / "siim"))
    edit(root)
    with pytest.raises(DataError, match=message):
        datamodule(root)


@pytest.mark.slow  # over ~3 s: the slow tier keeps make test-fast under 3 min
def test_a_gzipped_table_reads_as_the_plain_one(tmp_path, siim_root):
    root = Path(shutil.copytree(siim_root, tmp_path / "siim"))
    table = pd.read_csv(root / "train-rle.csv", dtype=str)
    (root / "train-rle.csv").unlink()
    table.to_csv(root / "train-rle.csv.gz", index=False)
    assert list(datamodule(root).table["Image Index"]) == list(
        datamodule(siim_root).table["Image Index"]
    )


@pytest.mark.slow
def test_two_batches_train_with_the_shipped_config(tmp_path, siim_root):
    from chexnet_pl.checkpoints.runs import load_run
    from chexnet_pl.train import train

    cfg = compose_train_config(
        tmp_path / "run",
        tiny_dataset_overrides("siim_pneumothorax", f"data.root={siim_root}")
        + ["model.backbone=resnet18", "test=true"],
    )
    assert cfg.data.split.method == "patient" and cfg.data.headers is True
    metrics, objects = train(cfg)
    assert objects["trainer"].global_step == 2
    run = load_run(objects["trainer"].checkpoint_callback.best_model_path, device="cpu")
    assert run.model.class_names == ["Pneumothorax"]
    assert "Pneumothorax" in pd.read_csv(tmp_path / "run" / "aucs.csv", index_col=0).index


@pytest.mark.slow  # over ~3 s: the slow tier keeps make test-fast under 3 min
def test_an_nih_checkpoint_is_scored_on_siims_pneumothorax(tmp_path, synthetic_root, siim_root):
    from sklearn.metrics import roc_auc_score

    from chexnet_pl.evaluate import evaluate

    ckpt = random_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt", "resnet18", 32,
                             root=str(synthetic_root))  # fmt: skip
    out = tmp_path / "on_siim"
    evaluate(compose_config("evaluate", out, f"ckpt={ckpt}", "data=siim_pneumothorax",
                            f"data.root={siim_root}", "data.num_workers=0",
                            "evaluation.bootstrap_samples=20", "evaluation.plots=false",
                            "evaluation.subgroups=[sex,view]"))  # fmt: skip
    aucs = pd.read_csv(out / "aucs.csv", index_col=0)
    preds = pd.read_csv(out / "preds.csv")
    raw = pd.read_csv(siim_root / "train-rle.csv")
    positive = raw.groupby("ImageId")[" EncodedPixels"].agg(lambda v: (v.str.strip() != "-1").any())
    assert aucs.at["Pneumothorax", "auroc"] == pytest.approx(
        roc_auc_score(positive.loc[preds["Image Index"]], preds["prob_Pneumothorax"]), abs=1e-9
    )


def test_a_mask_scored_against_itself_has_iou_one(siim_root):
    from chexnet_pl.localization import score_mask

    dm = datamodule(siim_root)
    image = dm.masks["Image Index"].iloc[0]
    truth = dm.mask(image)
    itself = score_mask(truth.astype(np.float32), truth, 0.5)
    assert itself["iou"] == 1.0 and itself["iobb"] == 1.0 and itself["mask_hit"] == 1.0
    assert itself["pointing_chance"] == pytest.approx(truth.mean())
    shifted = np.roll(truth, 40, axis=1)  # the same region 40 columns to the right
    moved = score_mask(shifted.astype(np.float32), truth, 0.5)
    overlap = (shifted & truth).sum() / (shifted | truth).sum()
    assert moved["iou"] == pytest.approx(overlap) and moved["iou"] < 1.0
    elsewhere = np.zeros_like(truth, dtype=np.float32)
    elsewhere[~truth] = 1.0
    assert score_mask(elsewhere, truth, 0.5)["mask_hit"] == 0.0
    with pytest.raises(DataError, match=r"shape \(32, 32\) cannot be scored against a mask"):
        score_mask(np.zeros((32, 32)), truth, 0.5)
