"""CheXpert (data=chexpert): the real train.csv, uncertainty policies, layouts, views, splits,
subgroup metadata, damaged tables, missing images, the JPEG cache, and training on it."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from chexnet_pl.config_defaults import shipped_data
from chexnet_pl.data.chexpert import CheXpertDataModule, read_chexpert_csv
from chexnet_pl.data.prepare import build_cache
from chexnet_pl.data.uncertainty import (
    CHEXPERT_LABELS,
    UncertaintyPolicy,
    labeller_values,
    ordered_labels,
)
from chexnet_pl.errors import ChexnetError, DataError

TARGET = "chexnet_pl.data.chexpert.CheXpertDataModule"

SETTINGS = {"image_size": 32, "batch_size": 4, "num_workers": 0, "cache": "off"}


def datamodule(root: Path, **overrides) -> CheXpertDataModule:
    dm = CheXpertDataModule(**shipped_data(TARGET, root=str(root), **{**SETTINGS, **overrides}))
    dm.setup()
    return dm


def copy_root(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "chexpert"))


def test_the_real_train_csv_reads_whole_with_each_policy(chexpert_train_csv):
    table = read_chexpert_csv(chexpert_train_csv)
    assert len(table) == 223_414 and table["Patient ID"].nunique() == 64_540
    assert int(table["Frontal"].sum()) == 191_027
    raw = labeller_values(table, CHEXPERT_LABELS, str(chexpert_train_csv))
    atelectasis = raw[:, CHEXPERT_LABELS.index("Atelectasis")]
    assert [int((atelectasis == v).sum()) for v in (1, 0, -1)] == [33_376, 1_328, 33_739]
    assert int(np.isnan(atelectasis).sum()) == 154_971  # blank: not mentioned

    def counts(**policy):
        target = UncertaintyPolicy(**policy).targets(raw, CHEXPERT_LABELS)
        column = target[:, CHEXPERT_LABELS.index("Atelectasis")]
        return int((column == 1).sum()), int((column == 0).sum()), int(np.isnan(column).sum())

    assert counts(uncertain="ignore") == (33_376, 1_328 + 154_971, 33_739)
    assert counts(uncertain="zeros") == (33_376, 1_328 + 154_971 + 33_739, 0)
    assert counts(uncertain="ones") == (33_376 + 33_739, 1_328 + 154_971, 0)
    assert counts(uncertain="zeros", not_mentioned="missing") == (33_376, 1_328 + 33_739, 154_971)


def test_a_per_label_mix_of_uncertainty_policies():
    names = ["Atelectasis", "Cardiomegaly", "Edema"]
    raw = np.array([[-1, -1, -1], [1, 0, np.nan], [0, 1, -1]], dtype=np.float32)
    policy = UncertaintyPolicy("ignore", {"Atelectasis": "ones", "Cardiomegaly": "zeros"})
    assert np.array_equal(
        policy.targets(raw, names),
        np.array([[1, 0, np.nan], [1, 0, 0], [0, 1, np.nan]], dtype=np.float32),
        equal_nan=True,
    )
    with pytest.raises(DataError, match=r"data.uncertain_by_label names 'Effusion', not a label"):
        UncertaintyPolicy("ignore", {"Effusion": "ones"})
    with pytest.raises(DataError, match=r"data.uncertain='u-ones'; use one of"):
        UncertaintyPolicy("u-ones")


def test_the_datamodule_gives_chexperts_labels_with_the_policy_applied(chexpert_root):
    dm = datamodule(chexpert_root)
    assert dm.pathologies == ordered_labels(True) and dm.pathologies[-1] == "No Finding"
    assert datamodule(chexpert_root, include_no_finding=False).num_classes == 13
    train_csv = pd.read_csv(chexpert_root / "CheXpert-v1.0-small" / "train.csv").set_index("Path")
    rows = dm.table["split"] != "test"
    raw = train_csv.loc[dm.table.loc[rows, "Image Index"], dm.pathologies].to_numpy()
    labels = dm.labels[rows.to_numpy()]
    assert np.isnan(labels[raw == -1]).all()  # U-Ignore: masked
    assert (labels[np.isnan(raw)] == 0).all() and (labels[raw == 1] == 1).all()
    ones = datamodule(chexpert_root, uncertain_by_label={"Edema": "ones"})
    edema = dm.pathologies.index("Edema")
    assert (ones.labels[rows.to_numpy()][raw[:, edema] == -1, edema] == 1).all()


def test_frontal_views_by_default_laterals_one_setting_away(chexpert_root):
    frontal = datamodule(chexpert_root)
    everything = datamodule(chexpert_root, view_position="all")
    lateral = datamodule(chexpert_root, view_position="lateral", require_test=False,
                         split={"method": "official", "valid_csv": "test"})  # fmt: skip
    assert frontal.table["Frontal"].all() and len(everything.table) > len(frontal.table)
    assert (~lateral.table["Frontal"]).all()
    assert len(frontal.table) + len(lateral.table) == len(everything.table)
    assert set(lateral.table["View Position"]) == {"LATERAL"}
    assert set(datamodule(chexpert_root, view_position="PA").table["View Position"]) == {"PA"}


def test_official_split_holds_out_patients_and_scores_valid_csv(chexpert_root):
    dm = datamodule(chexpert_root)
    table = dm.table
    test = table[table["split"] == "test"]
    assert test["Image Index"].str.contains("/valid/").all() and len(test) == 24
    assert not table.loc[table["split"] != "test", "Image Index"].str.contains("/valid/").any()
    per_patient = table.groupby("Patient ID")["split"].nunique()
    assert (per_patient == 1).all() and (table["split"] == "val").any()
    as_val = datamodule(
        chexpert_root, split={"method": "official", "valid_csv": "val"}, require_test=False
    )
    assert set(as_val.table.loc[as_val.table["split"] == "val", "Image Index"]) == set(
        test["Image Index"]
    )
    assert (as_val.table["split"] != "test").all()
    patient = datamodule(chexpert_root, split={"method": "patient", "seed": 1})
    assert not patient.table["Image Index"].str.contains("/valid/").any()
    assert patient.table.groupby("Patient ID")["split"].nunique().max() == 1


def test_sex_age_and_view_feed_the_subgroup_report(chexpert_root):
    table = datamodule(chexpert_root, view_position="all").table
    assert set(table["Patient Gender"]) <= {"M", "F", ""}
    assert table["Patient Age"].between(0, 100).all()
    assert set(table["View Position"]) <= {"AP", "PA", "LATERAL", "LL", "RL"}
    source = pd.read_csv(chexpert_root / "CheXpert-v1.0-small" / "train.csv").set_index("Path")
    first = table.iloc[0]
    assert source.at[first["Image Index"], "Age"] == first["Patient Age"]
    assert source.at[first["Image Index"], "Sex"][0] == first["Patient Gender"]


@pytest.mark.parametrize("release", ["CheXpert-v1.0-small", "CheXpert-v1.0"])
def test_both_layouts_and_either_root(tmp_path, chexpert_train_csv, release):
    from xray_datasets import make_chexpert_root

    root = make_chexpert_root(tmp_path, chexpert_train_csv, 6, 3, 32, release)
    from_parent = datamodule(root, view_position="all")
    from_release = datamodule(root / release, view_position="all")
    assert from_parent.table["path"].notna().all()
    assert list(from_parent.table["Image Index"]) == list(from_release.table["Image Index"])
    assert from_parent.table["Image Index"].str.startswith(f"{release}/").all()
    (root / "CheXpert-v1.0-other").mkdir()
    shutil.copytree(
        root / release, root / ("CheXpert-v1.0" if "small" in release else "CheXpert-v1.0-small")
    )
    with pytest.raises(DataError, match=r"holds both .* point data.root at the one to use"):
        datamodule(root)


def _edit_train_csv(root: Path, edit) -> Path:
    path = root / "CheXpert-v1.0-small" / "train.csv"
    edit(path)
    return path


def _rewrite(change):
    def edit(path: Path) -> None:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        change(table).to_csv(path, index=False)

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_rewrite(lambda t: t.drop(columns=["Edema"])), r"lacks column\(s\) \['Edema'\]"),
        (
            _rewrite(lambda t: t.assign(Edema=["2.0", *t["Edema"][1:]])),
            r"train.csv, line 2, column 'Edema': 2.0 is not a label value \(1 such cell",
        ),
        (
            _rewrite(lambda t: t.assign(Cardiomegaly=[*t["Cardiomegaly"][:4], "yes", *t["Cardiomegaly"][5:]])),
            r"line 6, column 'Cardiomegaly': 'yes' is not a label value",
        ),
        (_rewrite(lambda t: pd.concat([t, t.tail(1)])), r"is on more than one row \(lines \[\d+, \d+\]\)"),
        (
            _rewrite(lambda t: t.assign(Path=["CheXpert-v1.0-small/train/x/view1.jpg", *t["Path"][1:]])),
            r"line 2: 'CheXpert-v1.0-small/train/x/view1.jpg' names no patient",
        ),
        (
            _rewrite(lambda t: t.assign(**{"Frontal/Lateral": ["Oblique", *t["Frontal/Lateral"][1:]]})),
            r"line 2: Frontal/Lateral is 'Oblique'; use Frontal or Lateral",
        ),
        (lambda p: p.write_text(p.read_text().splitlines()[0] + "\n"), r"has a header but no rows"),
        (lambda p: p.write_text('Path,Sex\n"unclosed,x\n'), r"cannot parse .*train.csv as a CSV"),
    ],
)  # fmt: skip
def test_damaged_tables_say_where(tmp_path, chexpert_root, edit, message):
    root = copy_root(chexpert_root, tmp_path)
    _edit_train_csv(root, edit)
    with pytest.raises(DataError, match=message):
        datamodule(root)


def test_a_truncated_gzip_table_is_said_to_be_damaged(tmp_path, chexpert_train_csv):
    path = tmp_path / "train.csv.gz"
    path.write_bytes(chexpert_train_csv.read_bytes()[:5000])
    with pytest.raises(
        DataError, match=r"cannot parse .*train.csv.gz as a CSV \(is it damaged\?\)"
    ):
        read_chexpert_csv(path)
    with gzip.open(path, "wt") as handle:
        handle.write("Path,Sex\n")
    with pytest.raises(DataError, match=r"lacks column\(s\) \['Age'"):
        read_chexpert_csv(path)


def test_settings_are_checked_where_they_are_used(chexpert_root):
    for bad, message in [
        ({"view_position": "oblique"}, r"data.view_position='oblique'"),
        ({"split": {"method": "random"}}, r"data.split.method='random'"),
        ({"split": {"valid_csv": "train"}}, r"data.split.valid_csv='train'"),
        ({"not_mentioned": "zero"}, r"data.not_mentioned='zero'"),
    ]:
        with pytest.raises(ChexnetError, match=message):
            CheXpertDataModule(**shipped_data(TARGET, root=str(chexpert_root), **bad))
    with pytest.raises(DataError, match=r"no valid.csv at .*data.split.method=patient"):
        datamodule(chexpert_root, valid_csv=str(chexpert_root / "nowhere.csv"))


def test_missing_images_stop_the_run_or_are_skipped(tmp_path, chexpert_root):
    root = copy_root(chexpert_root, tmp_path)
    gone = sorted((root / "CheXpert-v1.0-small" / "train").rglob("view1_frontal.jpg"))[:3]
    for path in gone:
        path.unlink()
    with pytest.raises(DataError, match=r"3 of \d+ images listed in .*train.csv.* not on disk"):
        datamodule(root, report_dir=str(tmp_path / "run"))
    skipped = datamodule(root, missing_images="skip", report_dir=str(tmp_path / "run"))
    report = pd.read_csv(tmp_path / "run" / "skipped_images.csv")
    assert len(report) == 3 and report["reason"].str.startswith("not on disk").all()
    assert not set(report["Image Index"]) & set(skipped.table["Image Index"])
    (
        root / "CheXpert-v1.0-small" / "valid" / "patient64541" / "study1" / "view1_frontal.jpg"
    ).write_bytes(b"")
    with pytest.raises(DataError, match=r"1 image file\(s\) cannot be used:\n.*empty file"):
        datamodule(root, missing_images="skip", report_dir=str(tmp_path / "run"))


def test_prepare_caches_the_jpegs_the_datamodule_then_reads(tmp_path, chexpert_root):
    root = copy_root(chexpert_root, tmp_path)
    folder = build_cache(root, size=32, workers=1, progress=False)
    index = pd.read_csv(folder / "index.csv")
    assert len(index) == 325 and index["Image Index"].str.startswith("CheXpert-v1.0-small/").all()
    cached = datamodule(root, cache="required", view_position="all")
    assert cached.image_cache is not None
    decoded = datamodule(root, view_position="all")
    batch_cached = next(iter(cached.eval_dataloader("test")))
    batch_decoded = next(iter(decoded.eval_dataloader("test")))
    assert batch_cached["name"] == batch_decoded["name"]
    assert torch.equal(batch_cached["img"], batch_decoded["img"])
    from_release = build_cache(root / "CheXpert-v1.0-small", size=32, workers=1, progress=False)
    assert datamodule(root / "CheXpert-v1.0-small", cache="required").image_cache is not None
    assert from_release.parent == root / "CheXpert-v1.0-small" / "prepared"


@pytest.mark.slow
def test_training_on_chexpert_keeps_its_label_names(tmp_path, chexpert_root):
    from conftest import compose_train_config, tiny_dataset_overrides

    from chexnet_pl.checkpoints.runs import load_run
    from chexnet_pl.train import train

    cfg = compose_train_config(
        tmp_path / "run",
        tiny_dataset_overrides("chexpert", f"data.root={chexpert_root}")
        + ["data.cache=off", "model.backbone=resnet18"],
    )
    metrics, objects = train(cfg)
    best = objects["trainer"].checkpoint_callback.best_model_path
    run = load_run(best, device="cpu")
    assert run.model.class_names == ordered_labels(True)
    assert run.data_settings["_target_"] == "chexnet_pl.data.chexpert.CheXpertDataModule"
    aucs = pd.read_csv(tmp_path / "run" / "aucs.csv", index_col=0)
    assert list(aucs.index) == [*ordered_labels(False), "Mean (13 findings)", "No Finding"]
    assert "paper_auroc" not in aucs.columns  # the CheXNet paper's values are NIH's
    assert "test/auroc" in metrics


def _no_finding_by_pandas(table: pd.DataFrame) -> pd.Series:
    """No Finding under ``not_mentioned=missing``, computed apart from the project's code: the
    labeller's 1 stays 1; a blank is 0 when a pathology (not Support Devices) is 1 or -1."""
    pathologies = [c for c in CHEXPERT_LABELS if c not in ("No Finding", "Support Devices")]
    mentioned = table[pathologies].isin([1.0, -1.0]).any(axis=1)
    expected = table["No Finding"].astype(float).copy()
    expected[expected.isna() & mentioned] = 0.0
    return expected


def test_a_blank_no_finding_is_negative_when_a_finding_is_mentioned_on_a_hand_made_table():
    rows = {  # No Finding, then the findings that are not blank
        "normal": (1.0, {}),
        "support device only, labelled normal": (1.0, {"Support Devices": 1.0}),
        "effusion positive": (np.nan, {"Pleural Effusion": 1.0}),
        "edema uncertain": (np.nan, {"Edema": -1.0}),
        "only negatives": (np.nan, {"Edema": 0.0, "Cardiomegaly": 0.0}),
        "only a support device": (np.nan, {"Support Devices": 1.0}),
        "all blank": (np.nan, {}),
    }
    table = pd.DataFrame(
        [{"No Finding": nf, **found} for nf, found in rows.values()], columns=list(CHEXPERT_LABELS)
    )
    raw = labeller_values(table, CHEXPERT_LABELS, "hand-made")
    no_finding = CHEXPERT_LABELS.index("No Finding")
    missing = UncertaintyPolicy("ignore", not_mentioned="missing").targets(raw, CHEXPERT_LABELS)
    assert np.array_equal(
        missing[:, no_finding], [1, 1, 0, 0, np.nan, np.nan, np.nan], equal_nan=True
    )
    # only No Finding follows the rule: a blank Edema stays unknown beside a positive effusion
    assert np.isnan(missing[2, CHEXPERT_LABELS.index("Edema")])
    # the outputs' order (No Finding last, a subset of the columns) reads the whole row
    names = ordered_labels(True)
    columns = [CHEXPERT_LABELS.index(n) for n in names]
    subset = UncertaintyPolicy("ignore", not_mentioned="missing").targets(
        raw[:, columns], names, raw
    )
    assert np.array_equal(subset[:, -1], missing[:, no_finding], equal_nan=True)
    assert np.array_equal(subset[:, -1], _no_finding_by_pandas(table).to_numpy(), equal_nan=True)
    # not_mentioned=negative: every blank is 0 already
    negative = UncertaintyPolicy("ignore").targets(raw, CHEXPERT_LABELS)
    assert list(negative[:, no_finding]) == [1, 1, 0, 0, 0, 0, 0]


def test_no_finding_on_the_real_train_csv_follows_the_labellers_rule(chexpert_train_csv):
    table = read_chexpert_csv(chexpert_train_csv)
    frontal = table[table["Frontal"]].reset_index(drop=True)
    raw = labeller_values(frontal, CHEXPERT_LABELS, str(chexpert_train_csv))
    names = ordered_labels(True)
    columns = [CHEXPERT_LABELS.index(n) for n in names]
    target = UncertaintyPolicy("ignore", not_mentioned="missing").targets(
        raw[:, columns], names, raw
    )[:, names.index("No Finding")]
    expected = _no_finding_by_pandas(frontal).to_numpy()
    assert np.array_equal(target, expected, equal_nan=True)
    counts = int((target == 1).sum()), int((target == 0).sum()), int(np.isnan(target).sum())
    assert counts == (16_974, 169_869, 4_184)  # without the rule: (16,974, 0, 174,053)
