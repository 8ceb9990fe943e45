"""Device-resident data (``data.loader``) and batched augmentation, against the DataLoader and
albumentations paths they replace."""

from __future__ import annotations

import logging
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import small_datamodule
from test_no_sync import watched_reads

from chexnet_pl.config_defaults import shipped
from chexnet_pl.data.batch_augment import AffineParams, BatchAugment, warp_grid, warp_opencv
from chexnet_pl.data.device_loader import DeviceLoader, resolve_num_workers
from chexnet_pl.data.images import read_gray
from chexnet_pl.data.transforms import train_transform
from chexnet_pl.errors import ConfigError, DataError
from chexnet_pl.train import train

AUGMENT = {"hflip": 0.5, "affine": 0.5, "scale": (0.95, 1.05), "translate": 0.05, "rotate": 7.0}


@pytest.fixture(scope="module")
def xray(synthetic_root) -> np.ndarray:
    """A real image of the synthetic release (64 px PNG on disk)."""
    return read_gray(sorted((synthetic_root / "images").glob("*.png"))[0])


def _one(flip, scale_x, scale_y, shift_x, shift_y, angle) -> AffineParams:
    values = (scale_x, scale_y, shift_x, shift_y, angle)
    return AffineParams(np.array([flip]), np.array([True]), *(np.array([v]) for v in values))


@pytest.mark.parametrize(
    "flip, scale_x, scale_y, translate_x, translate_y, angle",
    [(True, 1.03, 0.97, 0.031, -0.02, 5.0), (False, 0.96, 1.04, -0.049, 0.045, -6.5)],
)
def test_warps_match_albumentations_for_the_same_parameters(
    xray, flip, scale_x, scale_y, translate_x, translate_y, angle
):
    size = xray.shape[0]
    steps = [A.HorizontalFlip(p=1.0)] if flip else []
    steps.append(
        A.Affine(
            scale={"x": (scale_x, scale_x), "y": (scale_y, scale_y)},
            translate_percent={"x": (translate_x, translate_x), "y": (translate_y, translate_y)},
            rotate=(angle, angle),
            border_mode=cv2.BORDER_CONSTANT,
            p=1.0,
        )
    )
    expected = A.Compose(steps)(image=xray)["image"]
    params = _one(flip, scale_x, scale_y, int(translate_x * size), int(translate_y * size), angle)
    batch = torch.from_numpy(xray[None].copy())
    assert np.array_equal(warp_opencv(batch, params)[0].numpy(), expected)
    grid = warp_grid(batch, params)[0].numpy().astype(int)
    assert np.abs(grid - expected).max() <= 2 and np.abs(grid - expected).mean() < 0.1


def test_batched_warp_reads_nothing_back(xray):
    """The GPU's warp (one grid_sample for the batch) never reads a tensor back to the host."""
    batch = torch.from_numpy(np.stack([xray] * 8))

    def refuse(name):
        raise AssertionError(f"the grid warp read a tensor back with Tensor.{name}")

    params = BatchAugment(**AUGMENT).sample(8, xray.shape[0], np.random.default_rng(0))
    with watched_reads(refuse):
        out = warp_grid(batch, params)
    assert out.shape == batch.shape and out.dtype == torch.uint8


def test_parameters_have_albumentations_ranges_and_rates():
    size = 224
    params = BatchAugment(**AUGMENT).sample(20_000, size, np.random.default_rng(0))
    assert abs(params.flip.mean() - 0.5) < 0.015 and abs(params.apply.mean() - 0.5) < 0.015
    for scale in (params.scale_x, params.scale_y):
        assert 0.95 <= scale.min() < 0.951 and 1.049 < scale.max() <= 1.05
    limit = int(0.05 * size)
    for shift in (params.shift_x, params.shift_y):
        assert shift.min() == -limit and shift.max() == limit and np.all(shift == np.trunc(shift))
    assert -7.0 <= params.angle.min() < -6.99 and 6.99 < params.angle.max() <= 7.0
    assert abs(np.corrcoef(params.scale_x, params.scale_y)[0, 1]) < 0.03  # independent, as albu


@pytest.mark.parametrize("warp", ["opencv", "grid"])
def test_mean_of_many_augmentations_matches_the_albumentations_path(xray, warp):
    count = 600
    albumentations = train_transform(xray.shape[0], **AUGMENT)
    albumentations.set_random_seed(0)
    expected = np.mean([albumentations(image=xray)["image"] for _ in range(count)], axis=0)
    batch = torch.from_numpy(np.stack([xray] * count))
    got = BatchAugment(**AUGMENT, warp=warp)(batch, np.random.default_rng(0)).numpy().mean(0)
    # Two independent samples of the same distribution: the mean images agree to about a grey level
    # (a missing flip or a wrong rotation sign moves the lesions and costs tens of levels).
    assert np.abs(got - expected).mean() < 1.5, np.abs(got - expected).mean()
    unflipped = BatchAugment(**{**AUGMENT, "hflip": 0.0}, warp=warp)
    wrong = unflipped(batch, np.random.default_rng(0)).numpy().mean(0)
    assert np.abs(wrong - expected).mean() > 3 * np.abs(got - expected).mean()


def _batches(loader: DeviceLoader, epoch: int) -> list[dict]:
    loader.sampler.set_epoch(epoch)
    return list(loader)


def test_seeded_runs_are_reproducible_and_epochs_differ(synthetic_cache):
    datamodule = small_datamodule(synthetic_cache, loader="device", seed=7, augment=AUGMENT)
    datamodule.setup()
    first, second = datamodule.train_dataloader(), datamodule.train_dataloader()
    assert isinstance(first, DeviceLoader)
    a, b = _batches(first, 3), _batches(second, 3)
    for x, y in zip(a, b, strict=True):
        assert x["name"] == y["name"] and torch.equal(x["img"], y["img"])
    other = _batches(first, 4)
    assert [x["name"] for x in other] != [x["name"] for x in a]
    # An epoch is a permutation of the split (the last partial batch dropped, as on the workers path)
    names = [n for x in a for n in x["name"]]
    split = datamodule.datasets["train"].table["Image Index"].tolist()
    assert len(set(names)) == len(names) == len(split) // 4 * 4 and set(names) <= set(split)
    # Labels and indices travel with their images
    table = datamodule.datasets["train"]
    for batch in a[:3]:
        rows = batch["idx"].tolist()
        assert batch["name"] == [table.table["Image Index"].iloc[r] for r in rows]
        assert torch.equal(batch["lab"], torch.from_numpy(table.labels[rows]))
    another_seed = small_datamodule(synthetic_cache, loader="device", seed=8, augment=AUGMENT)
    another_seed.setup()
    assert [x["name"] for x in _batches(another_seed.train_dataloader(), 3)] != [
        x["name"] for x in a
    ]


def test_evaluation_batches_are_those_of_the_workers_path(synthetic_cache):
    device = small_datamodule(synthetic_cache, loader="device", eval_batch_size=5)
    workers = small_datamodule(synthetic_cache, loader="workers", eval_batch_size=5)
    for split in ("val", "test", "train"):
        got, expected = device.eval_dataloader(split), workers.eval_dataloader(split)
        assert isinstance(got, DeviceLoader) and not isinstance(expected, DeviceLoader)
        pairs = list(zip(got, expected, strict=True))
        for x, y in pairs:
            assert x["name"] == list(y["name"]) and torch.equal(x["img"], y["img"])
            assert torch.equal(x["lab"], y["lab"]) and torch.equal(x["idx"], y["idx"])


def test_larger_cache_is_resized_like_the_workers_path(synthetic_root, tmp_path):
    from chexnet_pl.data.prepare import build_cache

    root = tmp_path / "nih"
    import shutil

    shutil.copytree(synthetic_root, root)
    build_cache(root, size=48, workers=1, progress=False)  # 48 px cache, 32 px training
    device = small_datamodule(root, loader="device")
    workers = small_datamodule(root, loader="workers")
    x, y = next(iter(device.eval_dataloader("val"))), next(iter(workers.eval_dataloader("val")))
    assert x["img"].shape[-1] == 32 and torch.equal(x["img"], y["img"])


def test_auto_picks_the_device_path_only_with_a_cache_that_fits(
    synthetic_root, synthetic_cache, caplog
):
    with caplog.at_level(logging.INFO):
        cached = small_datamodule(synthetic_cache)
        assert (
            isinstance(cached.train_dataloader(), DeviceLoader) and cached.loader_kind == "device"
        )
        uncached = small_datamodule(synthetic_root)
        assert not isinstance(uncached.train_dataloader(), DeviceLoader)
        too_big = small_datamodule(synthetic_cache, device_memory_share=1e-9)
        assert not isinstance(too_big.train_dataloader(), DeviceLoader)
    assert "data loading: workers (no valid prepared cache" in caplog.text
    assert "more than data.device_memory_share=1e-09" in caplog.text
    with pytest.raises(DataError, match=r"data.loader=device cannot be used: no valid prepared .*"
                       r"chexnet-prepare root="):  # fmt: skip
        small_datamodule(synthetic_root, loader="device").train_dataloader()
    with pytest.raises(ConfigError, match=r"data.loader='gpu' is not a valid setting; use one of"):
        small_datamodule(synthetic_root, loader="gpu")


def test_num_workers_auto(synthetic_root):
    import os

    cores = len(os.sched_getaffinity(0))
    assert resolve_num_workers("auto") == max(0, min(cores - 1, 16))
    shipped_value = shipped("data")["num_workers"]  # "auto": issue 19's defect rejected it
    datamodule = small_datamodule(synthetic_root, num_workers=shipped_value)
    assert datamodule.num_workers == resolve_num_workers("auto")
    with pytest.raises(ConfigError, match=r"data.num_workers='many': give auto or a whole number"):
        small_datamodule(synthetic_root, num_workers="many")


def _val_metrics(run: Path) -> pd.DataFrame:
    logged = pd.read_csv(run / "csv" / "metrics.csv")
    return logged[logged["val/loss"].notna()].set_index("epoch")[["val/loss", "val/auroc"]]


@pytest.mark.slow
def test_resume_on_the_device_path_continues_exactly(make_cfg, synthetic_cache, tmp_path):
    """Epoch 2 of a resumed run sees the batches and augmentations of an uninterrupted run."""
    common = (f"data.root={synthetic_cache}", "data.loader=device", "test=false",
              "callbacks.visualization.n_images=0", "trainer.limit_train_batches=3")  # fmt: skip
    whole = tmp_path / "whole"
    train(make_cfg(*common, "trainer.max_epochs=2", f"paths.output_dir={whole}"))
    first = tmp_path / "first"
    train(make_cfg(*common, "trainer.max_epochs=1", f"paths.output_dir={first}"))
    resumed = tmp_path / "resumed"
    train(make_cfg(*common, "trainer.max_epochs=2", f"paths.output_dir={resumed}",
                   f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}"))  # fmt: skip
    expected, got = _val_metrics(whole), _val_metrics(resumed)
    assert list(got.index) == [1]
    pd.testing.assert_frame_equal(got, expected.loc[[1]], atol=1e-6, rtol=0)
