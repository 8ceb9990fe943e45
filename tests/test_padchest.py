"""PadChest (data=padchest): the real table read in full against an independent pandas reading,
both image layouts, the label sets, projection and label-source filters, patient splits, subgroup
metadata, bad tables, external validation of an NIH model, and training on it."""

from __future__ import annotations

import ast
import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA, compose_config, random_checkpoint
from PIL import Image

from chexnet_pl.config_defaults import shipped_data
from chexnet_pl.data.images import read_gray
from chexnet_pl.data.nih_table import FINDINGS, IMAGE, PATIENT
from chexnet_pl.data.padchest import (
    NIH_MAP,
    TABLE_NAME,
    PadChestDataModule,
    read_padchest_table,
)
from chexnet_pl.data.synthetic import _render
from chexnet_pl.errors import ChexnetError, DataError

TARGET = "chexnet_pl.data.padchest.PadChestDataModule"
PADCHEST_CSV = SHARED_DATA / "padchest-meta" / f"{TABLE_NAME}.gz"
SETTINGS = {"image_size": 32, "batch_size": 4, "num_workers": 0, "cache": "off"}
ROWS = 400  # real rows in the miniature download


@pytest.fixture(scope="module")
def padchest_csv() -> Path:
    if not PADCHEST_CSV.is_file():
        pytest.skip(f"PadChest's real table not found at {PADCHEST_CSV} (../shared/data is only "
                    "beside CI checkouts)")  # fmt: skip
    return PADCHEST_CSV


@pytest.fixture(scope="module")
def real_table(padchest_csv) -> pd.DataFrame:
    return pd.read_csv(padchest_csv, dtype=str)


def write_png16(path: Path, findings: list[str], rng: np.random.Generator, size: int = 64) -> None:
    """A 12-bit X-ray in a 16-bit PNG (as PadChest's), with the synthetic lesions of NIH's
    findings among ``findings``."""
    image, _ = _render(size, [f for f in findings if f in FINDINGS], rng)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.astype(np.uint16) * 16).save(path)  # mode I;16


def make_padchest_root(dest: Path, table: pd.DataFrame, rows: int = ROWS, flat: bool = False
                       ) -> Path:  # fmt: skip
    """``dest`` with the real table's first ``rows`` rows (every column, gzipped as released)
    and a 16-bit PNG per image at ``<ImageDir>/<ImageID>`` (``flat``: ``<ImageID>``)."""
    rng = np.random.default_rng(0)
    part = table.iloc[:rows]
    dest.mkdir(parents=True, exist_ok=True)
    part.to_csv(dest / f"{TABLE_NAME}.gz", index=False, compression="gzip")
    for name, folder, labels in zip(part["ImageID"], part["ImageDir"], part["Labels"], strict=True):
        names = ast.literal_eval(labels) if isinstance(labels, str) else []
        nih = [f for f, padchest in NIH_MAP.items() if set(padchest) & {n.strip() for n in names}]
        write_png16(dest / name if flat else dest / folder / name, nih, rng)
    return dest


@pytest.fixture(scope="module")
def padchest_root(tmp_path_factory, real_table) -> Path:
    return make_padchest_root(tmp_path_factory.mktemp("padchest"), real_table)


def datamodule(root: Path, **overrides) -> PadChestDataModule:
    dm = PadChestDataModule(**shipped_data(TARGET, root=str(root), **{**SETTINGS, **overrides}))
    dm.setup()
    return dm


def independent_names(labels: pd.Series) -> pd.Series:
    """Each row's set of names, read apart from the module: literal lists, trimmed, lower case."""
    return labels.map(
        lambda s: {str(n).strip().lower() for n in ast.literal_eval(s)} - {""}
        if isinstance(s, str) else set()
    )  # fmt: skip


@pytest.mark.slow  # over ~5 s: the slow tier keeps make test-fast under 3 min
def test_the_real_table_reads_whole_and_counts_as_pandas_does(padchest_csv, real_table):
    table = read_padchest_table(padchest_csv)
    assert len(table) == 160_861 and table["PatientID"].nunique() == 67_625
    assert table["Projection"].value_counts().to_dict() == {
        "PA": 91_728, "L": 49_579, "AP_horizontal": 14_346, "AP": 4_559, "COSTAL": 630,
        "EXCLUDE": 11, "UNK": 8,
    }  # fmt: skip
    assert (table["MethodLabel"] == "Physician").sum() == 39_053
    names = independent_names(real_table["Labels"])
    assert [set(f or ()) for f in table["findings"]] == names.tolist()
    assert table["findings"].isna().sum() == (names.map(len) == 0).sum() == 103 + 777
    # The README's counts are mentions (a few lists name a finding twice); images are fewer.
    mentions = real_table["Labels"].dropna().map(ast.literal_eval).explode().str.strip()
    assert mentions.str.lower().value_counts()[["cardiomegaly", "pleural effusion"]].tolist() == [
        15_028, 10_026,
    ]  # fmt: skip
    per_image = names.explode().value_counts()
    assert per_image["cardiomegaly"] == 15_022 and per_image["pleural effusion"] == 9_853


@pytest.mark.slow  # over ~8 s: the slow tier keeps make test-fast under 3 min
def test_nih_labels_on_the_real_table_equal_the_map_read_by_pandas(padchest_csv, real_table):
    dm = PadChestDataModule(**shipped_data(TARGET, root=str(padchest_csv.parent), **SETTINGS))
    images = dm.read_labels()
    assert dm.pathologies == [*FINDINGS, "No Finding"]
    names = independent_names(real_table["Labels"])
    used = real_table["Projection"].isin(["PA", "AP", "AP_horizontal"]) & (names.map(len) > 0)
    assert len(images.table) == used.sum() == 110_043
    assert images.table[IMAGE].tolist() == real_table.loc[used, "ImageID"].tolist()
    expected = {
        f: names[used].map(lambda s, f=f: bool(s & set(NIH_MAP[f]))).sum() for f in FINDINGS
    }
    expected["No Finding"] = names[used].map(lambda s: "normal" in s).sum()
    assert dict(zip(dm.pathologies, images.labels.sum(axis=0).astype(int).tolist(), strict=True)) \
        == expected  # fmt: skip
    assert expected["Cardiomegaly"] == 9_848 and expected["Effusion"] == 7_021
    # patient-level split, every patient in one split
    assert images.table.groupby(PATIENT)["split"].nunique().max() == 1
    physician = PadChestDataModule(**shipped_data(
        TARGET, root=str(padchest_csv.parent), label_source="physician", projections=["PA", "L",
        "AP", "AP_horizontal", "COSTAL", "EXCLUDE", "UNK"], **SETTINGS)).read_labels()  # fmt: skip
    assert (
        len(physician.table)
        == 39_053 - ((real_table["MethodLabel"] == "Physician") & (names.map(len) == 0)).sum()
    )


def test_the_datamodule_reads_numbered_folders_and_subgroup_metadata(padchest_root, real_table):
    dm = datamodule(padchest_root)
    rows = real_table.iloc[:ROWS]
    kept = rows[rows["Projection"].isin(["PA", "AP", "AP_horizontal"]) & rows["Labels"].notna()]
    assert set(dm.table[IMAGE]) <= set(kept["ImageID"]) and len(dm.table) > 0.8 * len(kept)
    assert all(Path(p).parent.name.isdigit() for p in dm.table["path"])
    row = dm.table.set_index(IMAGE).loc[kept["ImageID"].iloc[0]]
    source = kept.iloc[0]
    assert row["Patient Age"] == int(source["StudyDate_DICOM"][:4]) - float(source["PatientBirth"])
    assert row["Patient Gender"] == source["PatientSex_DICOM"]
    assert row["Manufacturer"] == source["Manufacturer_DICOM"]
    assert set(dm.table["View Position"]) <= {"PA", "AP"}
    sample = dm.datasets["train"][0]
    assert tuple(sample["img"].shape) == (1, 32, 32) and sample["lab"].shape == (15,)
    path = dm.table["path"].iloc[0]
    assert Image.open(path).mode == "I;16"  # PadChest's 16-bit PNG, read to its full range
    drawn = np.asarray(Image.open(path)).astype(int) // 16  # the 8-bit image written, x16
    assert np.abs(read_gray(path).astype(int) - drawn).max() <= 1  # 12 bits, not 16: not black


def test_one_flat_folder_and_every_label_set(tmp_path, real_table):
    root = make_padchest_root(tmp_path / "flat", real_table, rows=200, flat=True)
    dm = datamodule(root, labels="all", min_label_count=10)
    counts = (
        independent_names(real_table.set_index("ImageID").loc[dm.table[IMAGE], "Labels"])
        .explode()
        .value_counts()
    )
    frequent = sorted((-c, n) for n, c in counts.items() if c >= 10)  # most first, then by name
    assert dm.pathologies == [n for _, n in frequent]
    assert dm.labels.sum(axis=0).tolist() == [-c for c, _ in frequent]
    assert "normal" in dm.pathologies
    chosen = datamodule(root, labels=["Cardiomegaly", "pleural effusion"])
    assert chosen.pathologies == ["cardiomegaly", "pleural effusion"]
    with pytest.raises(DataError, match=r"data.labels names \['no such finding'\]"):
        datamodule(root, labels=["no such finding"])


def _set(column: str, row: int, value: str):
    def edit(table: pd.DataFrame) -> None:
        table.loc[row, column] = value

    return edit


def _edit(tmp_path: Path, padchest_root: Path, edit) -> Path:
    root = Path(shutil.copytree(padchest_root, tmp_path / "padchest"))
    path = root / f"{TABLE_NAME}.gz"
    table = pd.read_csv(path, dtype=str)
    edit(table)
    table.to_csv(path, index=False, compression="gzip")
    return root


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            _set("Labels", 4, "pleural effusion"),
            r"row 5 \(ImageID .*\): Labels is 'pleural effusion', not a list of finding names",
        ),
        (
            _set("Labels", 6, "__import__('os').system('false')"),
            r"row 7 .*Labels is \"__import__\('os'\).*\", not a list",
        ),
        (_set("Labels", 8, "[1, 2]"), r"row 9 .*Labels is '\[1, 2\]', not a list of finding"),
        (
            _set("Projection", 2, "OBLIQUE"),
            r"row 3 \(ImageID .*\): Projection is 'OBLIQUE'; the release writes one of",
        ),
        (
            lambda t: t.drop(columns=["PatientID"], inplace=True),
            r"lacks column\(s\) \['PatientID'\]",
        ),
    ],
    ids=[
        "labels-not-a-list",
        "labels-code",
        "labels-not-names",
        "unknown-projection",
        "missing-column",
    ],
)
def test_bad_tables_say_where_and_what(tmp_path, padchest_root, edit, message):
    root = _edit(tmp_path, padchest_root, edit)
    with pytest.raises(DataError, match=message) as error:
        datamodule(root)
    assert str(root) in str(error.value)


def test_a_truncated_table_and_bad_settings(tmp_path, padchest_root):
    root = Path(shutil.copytree(padchest_root, tmp_path / "padchest"))
    data = gzip.decompress((root / f"{TABLE_NAME}.gz").read_bytes())
    (root / f"{TABLE_NAME}.gz").write_bytes(gzip.compress(data)[:2000])
    with pytest.raises(DataError, match="damaged"):
        datamodule(root)
    with pytest.raises(ChexnetError, match=r"data.projections\[\]"):
        datamodule(padchest_root, projections=["PA", "LATERAL"])
    with pytest.raises(ChexnetError, match="data.label_source"):
        datamodule(padchest_root, label_source="radiologist")
    with pytest.raises(DataError, match=f"no {TABLE_NAME}"):
        datamodule(tmp_path)


def test_an_nih_checkpoint_evaluates_on_padchest(tmp_path, synthetic_root, padchest_root):
    from chexnet_pl.evaluate import evaluate

    ckpt = random_checkpoint(tmp_path / "nih" / "checkpoints" / "best.ckpt", "resnet18", 32,
                             root=str(synthetic_root))  # fmt: skip
    out = tmp_path / "external"
    evaluate(compose_config(
        "evaluate", out, f"ckpt={ckpt}", "data=padchest", f"data.root={padchest_root}",
        "data.num_workers=0", "evaluation.bootstrap_samples=20", "evaluation.plots=false",
        "evaluation.subgroups=[sex,age,manufacturer,pediatric]", "evaluation.min_subgroup_images=1",
    ))  # fmt: skip
    table = pd.read_csv(out / "aucs.csv", index_col=0)
    preds = pd.read_csv(out / "preds.csv")
    # the subgroup report has PadChest's manufacturers and the pediatric flag
    subgroups = pd.read_csv(out / "subgroups.csv")
    assert {"sex", "age", "manufacturer", "pediatric"} <= set(subgroups.iloc[:, 0])
    makers = set(subgroups.loc[subgroups.iloc[:, 0] == "manufacturer"].iloc[:, 1])
    assert makers & {"PHILIPSMEDICALSYSTEMS", "IMAGINGDYNAMICSCOMPANYLTD"}
    # the shortcut audit's default on PadChest: each finding by the X-ray unit's maker
    stratified = pd.read_csv(out / "stratified.csv")
    assert set(stratified["covariate"]) == {"manufacturer"}
    assert set(stratified["stratum"]) <= makers and len(set(stratified["finding"])) > 1
    dm = datamodule(padchest_root)
    test = dm.table[dm.table["split"] == "test"]
    assert sorted(preds["Image Index"]) == sorted(test[IMAGE])
    # NIH's outputs are PadChest's labels by name: every finding with both classes is scored
    present = [
        f
        for j, f in enumerate(dm.pathologies)
        if 0 < dm.labels[(dm.table["split"] == "test").to_numpy(), j].sum() < len(test)
    ]
    assert set(present) <= set(table.index[table["auroc"].notna()])


@pytest.mark.slow
def test_training_two_batches_with_the_shipped_defaults(tmp_path, padchest_root):
    from conftest import compose_train_config, tiny_dataset_overrides

    from chexnet_pl.checkpoints.runs import load_run
    from chexnet_pl.train import train

    cfg = compose_train_config(
        tmp_path / "run",
        tiny_dataset_overrides("padchest", f"data.root={padchest_root}")
        + ["data.cache=off", "model.backbone=resnet18"],
    )
    assert cfg.trainer.limit_train_batches == 2 and cfg.data.labels == "nih"
    metrics, objects = train(cfg)
    assert objects["trainer"].global_step == 2
    run = load_run(objects["trainer"].checkpoint_callback.best_model_path, device="cpu")
    assert run.model.class_names == [*FINDINGS, "No Finding"]
    assert run.data_settings["_target_"] == TARGET
    assert "test/auroc" in metrics


def test_prepare_caches_the_16_bit_pngs_the_datamodule_then_reads(tmp_path, padchest_root):
    from chexnet_pl.data.prepare import build_cache

    root = Path(shutil.copytree(padchest_root, tmp_path / "padchest"))
    build_cache(root, size=32, workers=1, progress=False)
    cached = datamodule(root, cache="required")
    assert cached.image_cache is not None
    files = datamodule(root)
    sample, direct = cached.datasets["val"][0], files.datasets["val"][0]
    assert sample["name"] == direct["name"]
    # the cache holds the same 16-bit image, decoded once (area-resized to 32 px either way)
    assert (sample["img"].float() - direct["img"].float()).abs().max() < 0.05
