"""data=pooled: any shipped datasets trained as one (the generalisation of data=nih+chexpert) —
members chosen on the command line, each member's labels under the pool's names (VinDr-CXR's
spellings of NIH's findings renamed), NaN where a member lacks a label and masked in the loss,
per-source AUROC. Members: NIH's synthetic download, and PadChest and VinDr-CXR miniatures built
from their real tables' rows with generated 16-bit PNGs and DICOMs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_config, make_model, tiny_dataset_overrides
from hydra.utils import instantiate
from omegaconf import OmegaConf
from test_padchest import make_padchest_root
from test_vindr_cxr import make_vindr_root

from chexnet_pl.config_defaults import shipped_data
from chexnet_pl.data.build import build_datamodule
from chexnet_pl.data.nih_table import IMAGE
from chexnet_pl.data.nih_table import class_names as nih_class_names
from chexnet_pl.data.padchest import PadChestDataModule
from chexnet_pl.data.pooled import member_label_names
from chexnet_pl.data.vindr_cxr import VinDrCXRDataModule
from chexnet_pl.errors import DataError

MEMBERS = "data.members=[nih,padchest,vindr_cxr]"
PADCHEST_ROWS, VINDR_IMAGES = 160, 120


@pytest.fixture(scope="module")
def padchest_root(tmp_path_factory, request) -> Path:
    real_table = request.getfixturevalue("real_padchest_table")
    return make_padchest_root(tmp_path_factory.mktemp("padchest"), real_table, rows=PADCHEST_ROWS)


@pytest.fixture(scope="module")
def real_padchest_table(request) -> pd.DataFrame:
    from test_padchest import PADCHEST_CSV

    if not PADCHEST_CSV.is_file():
        pytest.skip(f"PadChest's real table not found at {PADCHEST_CSV}")
    return pd.read_csv(PADCHEST_CSV, dtype=str, nrows=2000)


@pytest.fixture(scope="module")
def vindr_root(tmp_path_factory) -> Path:
    from test_vindr_cxr import VINDR_CSV

    if not VINDR_CSV.is_file():
        pytest.skip(f"VinDr-CXR's real table not found at {VINDR_CSV}")
    table = pd.read_csv(VINDR_CSV)
    return make_vindr_root(tmp_path_factory.mktemp("vindr"), table, images=VINDR_IMAGES)


def pool_overrides(synthetic_root: Path, padchest_root: Path, vindr_root: Path) -> list[str]:
    return tiny_dataset_overrides(
        "pooled", MEMBERS, f"data.datasets.nih.root={synthetic_root}",
        f"data.datasets.padchest.root={padchest_root}", f"data.datasets.vindr_cxr.root={vindr_root}",
    )  # fmt: skip


@pytest.fixture(scope="module")
def pool(tmp_path_factory, synthetic_root, padchest_root, vindr_root):
    """The pool as ``chexnet-train data=pooled data.members=[...]`` builds it (Hydra, shipped)."""
    cfg = compose_config("train", tmp_path_factory.mktemp("run"),
                         *pool_overrides(synthetic_root, padchest_root, vindr_root))  # fmt: skip
    dm = instantiate(cfg.data)
    dm.setup()
    return dm


def test_three_members_pool_into_one_label_set(pool, padchest_root, vindr_root):
    assert list(pool.members) == ["nih", "padchest", "vindr_cxr"]
    # only the members' settings are kept (what a checkpoint stores)
    assert list(pool.hparams["datasets"]) == ["nih", "padchest", "vindr_cxr"]
    assert pool.hparams["members"] == ["nih", "padchest", "vindr_cxr"]
    nih = nih_class_names()
    # NIH's 15 first; VinDr's own spellings of NIH's findings are NIH's outputs, not new ones
    assert pool.pathologies[: len(nih) - 1] == nih[:-1] and pool.pathologies[-1] == "No Finding"
    for spelled in ("Pleural effusion", "Pulmonary fibrosis", "Pleural thickening", "No finding"):
        assert spelled not in pool.pathologies
    # VinDr's 14 classes: 8 are NIH's findings, 6 are new outputs
    assert pool.pathologies[len(nih) - 1 : -1] == [
        "Aortic enlargement",
        "Calcification",
        "ILD",
        "Lung Opacity",
        "Nodule/Mass",
        "Other lesion",
    ]

    labels = pd.DataFrame(pool.labels, columns=pool.pathologies)
    source = pool.table["Dataset"]
    assert source.value_counts().to_dict().keys() == {"nih", "padchest", "vindr_cxr"}
    # each member's rows carry exactly its own labels, under the pool's names; the rest NaN
    for name, module, settings in (
        ("padchest", PadChestDataModule, {"root": str(padchest_root)}),
        ("vindr_cxr", VinDrCXRDataModule, {"root": str(vindr_root)}),
    ):
        alone = module(**shipped_data(f"{module.__module__}.{module.__name__}", **settings,
                                      num_workers=0, cache="off", image_size=32))  # fmt: skip
        alone.setup()
        own = pd.DataFrame(alone.labels, columns=member_label_names(alone))
        own.index = alone.table[IMAGE]
        rows = (source == name).to_numpy()
        assert rows.sum() == len(own)
        mine = labels[rows].set_axis(pool.table.loc[rows, IMAGE].to_numpy())
        np.testing.assert_array_equal(mine[own.columns].to_numpy(),
                                      own.loc[mine.index].to_numpy())  # fmt: skip
        lacking = [c for c in pool.pathologies if c not in own.columns]
        assert lacking and mine[lacking].isna().all().all()
    vindr = (source == "vindr_cxr").to_numpy()
    assert labels.loc[vindr, "Effusion"].notna().all() and labels.loc[vindr, "Hernia"].isna().all()
    assert labels.loc[~vindr, "Aortic enlargement"].isna().all()
    # a PadChest image's Effusion is its 'pleural effusion'; NIH's Hernia is known for NIH images
    assert labels.loc[(source == "nih").to_numpy(), "Hernia"].notna().all()
    assert pool.table["Patient ID"].str.match(r"^(nih|padchest|vindr_cxr)/").all()


def test_the_loss_masks_what_a_member_does_not_label(pool):
    """A batch mixing the members: the loss is BCE over the known labels only, and no gradient
    reaches an output for an image whose dataset lacks that label."""
    loader = pool.train_dataloader()
    batch = next(
        b for b in loader if torch.isnan(b["lab"]).any() and (~torch.isnan(b["lab"])).any()
    )
    labels = batch["lab"]
    known = ~torch.isnan(labels)
    assert not known.all() and known.any(dim=1).all()
    model = make_model(backbone="resnet18", class_names=pool.pathologies, pos_weight=False)
    logits = torch.randn(labels.shape, requires_grad=True)
    loss = model._loss(logits, labels)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[known], labels[known], reduction="mean"
    )
    assert torch.isfinite(loss) and torch.allclose(loss, expected)
    loss.backward()
    assert (logits.grad[~known] == 0).all() and (logits.grad[known] != 0).all()
    # a NaN label is masked, not counted as negative: setting it to 0 would change the loss
    zeroed = model._loss(logits.detach(), torch.nan_to_num(labels, nan=0.0))
    assert not torch.allclose(zeroed, loss.detach())


def test_members_must_be_datasets_with_folders(tmp_path, synthetic_root, padchest_root,
                                                vindr_root):  # fmt: skip
    overrides = pool_overrides(synthetic_root, padchest_root, vindr_root)
    for members, message in (
        ("[nih,padchst]", r"\['padchst'\] not among the datasets \[.*'padchest'"),
        ("[nih,nih]", r"names \['nih'\] twice"),
        ("[nih,chexpert]", r"no folder given for the pooled dataset\(s\) chexpert: give "
                           r"data.datasets.chexpert.root=<its folder>"),
    ):  # fmt: skip
        cfg = compose_config("train", tmp_path, *overrides, f"data.members={members}")
        with pytest.raises(DataError, match=message):
            build_datamodule(OmegaConf.to_container(cfg.data, resolve=True))


def test_the_pooled_config_lists_every_shipped_dataset():
    """data=pooled composes every conf/data dataset under datasets (so any can be a member);
    data=nih+chexpert is unchanged (two datasets, no members setting)."""
    from chexnet_pl.config_defaults import data_targets

    cfg = compose_config("train", None, "data=pooled")
    assert OmegaConf.is_missing(cfg.data, "members")
    modules = {OmegaConf.select(cfg, f"data.datasets.{n}._target_") for n in cfg.data.datasets}
    assert modules == set(data_targets()) - {"chexnet_pl.data.pooled.PooledDataModule"}
    old = compose_config("train", None, "data=nih+chexpert")
    assert list(old.data.datasets) == ["nih", "chexpert"] and "members" not in old.data


@pytest.mark.slow
def test_training_two_batches_on_three_members(tmp_path, synthetic_root, padchest_root,
                                               vindr_root):  # fmt: skip
    from conftest import compose_train_config

    from chexnet_pl.checkpoints.runs import load_run
    from chexnet_pl.train import train

    cfg = compose_train_config(
        tmp_path / "run",
        pool_overrides(synthetic_root, padchest_root, vindr_root)
        + ["model.backbone=resnet18", "evaluation.subgroups=[dataset]",
           "evaluation.min_subgroup_images=1", "evaluation.min_subgroup_positives=1"],
    )  # fmt: skip
    cfg.trainer.limit_test_batches = 1.0  # every test image: each member's AUROC is on all of it
    metrics, objects = train(cfg)
    assert objects["trainer"].global_step == 2
    dm = objects["datamodule"]
    run = load_run(objects["trainer"].checkpoint_callback.best_model_path, device="cpu")
    assert run.model.class_names == dm.pathologies
    assert run.data_settings["members"] == ["nih", "padchest", "vindr_cxr"]
    # the checkpoint rebuilds the same pool (what chexnet-evaluate ckpt=<this run> scores on)
    from chexnet_pl.checkpoints.runs import datamodule_for

    again = datamodule_for(run, {}, tmp_path / "again")
    again.setup()
    assert list(again.members) == list(dm.members) and again.pathologies == dm.pathologies
    pd.testing.assert_frame_equal(again.datasets["test"].table, dm.datasets["test"].table)
    aucs = pd.read_csv(tmp_path / "run" / "aucs.csv", index_col=0)
    test = dm.datasets["test"].table
    counted = aucs["positives"] + aucs["negatives"]
    assert counted["Hernia"] == (test["Dataset"] != "vindr_cxr").sum()  # NIH and PadChest's
    assert counted["Aortic enlargement"] == (test["Dataset"] == "vindr_cxr").sum()
    subgroups = pd.read_csv(tmp_path / "run" / "subgroups.csv")
    per_source = subgroups.query("attribute == 'dataset'")
    assert {"NIH", "PADCHEST", "VINDR_CXR"} <= set(per_source["subgroup"])
    # a member's AUROC of a label it lacks is undefined (no labelled image), never a number
    vindr_hernia = per_source.query("subgroup == 'VINDR_CXR' and finding == 'Hernia'")
    assert vindr_hernia["auroc"].isna().all()
    assert per_source.query("subgroup == 'NIH'")["auroc"].notna().any()


def test_dicom_releases_pool_by_their_labels_names(tmp_path, vindr_root):
    """RSNA's Lung Opacity is VinDr's, SIIM's Pneumothorax is VinDr's (VinDr's images know both);
    the default map's Effusion entry names no member's label and is not used."""
    from dicom_datasets import make_rsna_root, make_siim_root
    from test_rsna_pneumonia import LABELS_ZIP
    from test_siim_pneumothorax import RLE_CSV

    if not (LABELS_ZIP.is_file() and RLE_CSV.is_file()):
        pytest.skip("RSNA's and SIIM's real tables are not here")
    rsna = make_rsna_root(tmp_path / "rsna", LABELS_ZIP, images=40)
    siim = make_siim_root(tmp_path / "siim", RLE_CSV, images=40, patients=20)
    cfg = compose_config("train", tmp_path / "run", *tiny_dataset_overrides(
        "pooled", "data.members=[rsna_pneumonia,siim_pneumothorax,vindr_cxr]",
        f"data.datasets.rsna_pneumonia.root={rsna}", f"data.datasets.siim_pneumothorax.root={siim}",
        f"data.datasets.vindr_cxr.root={vindr_root}"))  # fmt: skip
    dm = instantiate(cfg.data)
    dm.setup()
    assert dm.pathologies[:2] == ["Lung Opacity", "Pneumothorax"] and len(dm.pathologies) == 15
    labels = pd.DataFrame(dm.labels, columns=dm.pathologies)
    source = dm.table["Dataset"].to_numpy()
    assert labels.loc[source != "siim_pneumothorax", "Lung Opacity"].notna().all()
    assert labels.loc[source == "siim_pneumothorax", "Lung Opacity"].isna().all()
    assert labels.loc[source == "rsna_pneumonia", "Pneumothorax"].isna().all()
    assert labels.loc[source != "rsna_pneumonia", "Pneumothorax"].notna().all()
    assert labels.loc[source != "vindr_cxr", "Effusion"].isna().all()
