"""What every dataset's LightningDataModule shares: a labelled table (from the dataset's own module)
→ image files checked → image cache → datasets → loaders (workers or device).

A dataset is one module with a subclass of ``ChestXrayDataModule`` that names its labels
(``pathologies``) and implements ``read_labels`` (its tables, split and view filter), plus one
config in ``conf/data/``. Labels a dataset does not have for an image are NaN.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from chexnet_pl.data.batch_augment import BatchAugment
from chexnet_pl.data.cache import ImageCache, find_cache
from chexnet_pl.data.dataset import ChestXrayDataset
from chexnet_pl.data.device_loader import (
    DeviceImages,
    DeviceLoader,
    load_split,
    pick_loader,
    workers_for,
)
from chexnet_pl.data.file_problems import FileReport, find_file_problems, with_unmatched
from chexnet_pl.data.labelled_images import LabelledImages
from chexnet_pl.data.nih_table import IMAGE
from chexnet_pl.data.settings import check_common_settings
from chexnet_pl.data.splits import SPLITS
from chexnet_pl.data.transforms import eval_transform, train_transform
from chexnet_pl.device import detect_caps, pin_memory
from chexnet_pl.errors import ConfigError, DataError
from chexnet_pl.validation import Problems

log = logging.getLogger(__name__)


class ChestXrayDataModule(pl.LightningDataModule):
    """The machinery every dataset shares; a subclass (one per dataset) sets ``pathologies`` and
    implements ``read_labels``.

    Args:
        root: the dataset's folder (images and tables; the cache goes to ``<root>/prepared``).
        missing_images: error (stop, naming the missing files) or skip (use only images present).
        on_bad_image: error (stop, listing every unusable file) or skip (leave them out).
        check_images: a fast header check of every image before training; ``decode_check``:
            the splits whose images are also decoded in full then (when not read from the cache,
            whose builder decoded every image), so a corrupt val/test file cannot end a run late.
        report_dir: where ``skipped_images.csv`` / ``bad_images.csv`` go (the run folder).
        augment: keyword arguments of ``train_transform``.
        cache: auto (read the pre-resized cache of ``chexnet-prepare`` when one
            is valid for these images, else decode the image files), off, or required (stop when there
            is no valid cache). A stale or partial cache is never used.
        cache_dir: where ``prepare`` wrote it (default ``<root>/prepared``); ``cache_size``: which
            size to use (default: the smallest prepared size ≥ ``image_size``).
        num_workers: DataLoader workers, or auto (the usable cores − 1, at most 16).
        loader: auto, workers (DataLoader) or device (``data.device_loader``: the split's cached
            images held on the training device). auto picks device when a valid cache covers
            the images and they fit in ``device_memory_share`` of the device's free memory (of
            the available RAM on a CPU).
        seed: seeds the device path's per-epoch order and augmentation (the run's ``seed``).
    """

    pathologies: list[str]
    # A published AUROC per label and their mean, shown beside scores on this data (or None).
    reference_auroc: tuple[dict[str, float], float] | None = None

    def __init__(
        self,
        root: str | None,
        image_size: int,
        batch_size: int,
        eval_batch_size: int | None,
        num_workers: int | str,
        pin_memory: bool,
        missing_images: str,
        on_bad_image: str,
        check_images: bool,
        decode_check: Sequence[str],
        report_dir: str | None,
        require_test: bool,
        augment: Mapping[str, Any],
        cache: str,
        cache_dir: str | None,
        cache_size: int | None,
        loader: str,
        device_memory_share: float,
        seed: int,
    ) -> None:
        super().__init__()
        # Plain values (this class's and the subclass's), stored in checkpoints so evaluation can
        # rebuild the same data and split; ``_target_`` says which data module.
        self.save_hyperparameters(logger=False)
        self.hparams["_target_"] = f"{type(self).__module__}.{type(self).__qualname__}"
        # Every unusable value, this class's and the dataset's (``check_settings``), in one error.
        problems = Problems("data")
        check_common_settings(self.hparams, problems)
        self.check_settings(self.hparams, problems)
        problems.raise_if_any()
        self.root = Path(root).expanduser() if root else None
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = workers_for(num_workers)
        self.pin_memory = bool(pin_memory)
        self.check_images = bool(check_images)
        self.decode_check = tuple(decode_check)
        self.file_report = FileReport(
            missing_images, on_bad_image, Path(report_dir) if report_dir else None, self.root
        )
        self.require_test = bool(require_test)
        self.augment = dict(augment)
        self.cache_mode = cache
        self.cache_dir = (
            Path(cache_dir).expanduser()
            if cache_dir
            else self.root / "prepared"
            if self.root
            else None
        )
        self.cache_size = int(cache_size) if cache_size else None
        self.image_cache: ImageCache | None = None
        self.table: pd.DataFrame | None = None
        self.labels: np.ndarray | None = None
        self.datasets: dict[str, ChestXrayDataset] = {}
        self.loader_mode, self.device_memory_share = loader, float(device_memory_share)
        self.seed = int(seed)
        self.loader_kind: str | None = None  # workers | device, chosen at the first loader
        self.on_device: dict[str, DeviceImages] = {}

    @property
    def num_classes(self) -> int:
        return len(self.pathologies)

    def check_settings(self, settings: Mapping[str, Any], problems: Problems) -> None:
        """Add what is wrong with the dataset's own settings (``settings``: every argument of
        the data module, its subclass's included) to ``problems``; nothing is read here but the
        dataset's folder and tables' presence."""

    def read_labels(self) -> LabelledImages:
        """This dataset's images with their labels, split and files (see ``LabelledImages``):
        its tables read, split (on the whole table, so split lists are checked as released),
        filtered by view, and the rows in no split left out. No image is opened here."""
        raise NotImplementedError

    def cache_names(self, table: pd.DataFrame) -> pd.Series:
        """The names ``table``'s images have in the cache ``chexnet-prepare root=<root>`` builds:
        their paths relative to ``root`` (NIH, whose images have unique file names, uses those)."""
        root = str(self.root)
        return table["path"].map(lambda path: Path(os.path.relpath(path, root)).as_posix())

    def setup(self, stage: str | None = None) -> None:
        if self.table is not None:
            return
        images = self.read_labels()
        table, labels, cache_rows = self._check_files(
            images.table, images.labels, images.source, images.unmatched
        )

        self.table, self.labels = table, labels
        for name in SPLITS:
            rows = (table["split"] == name).to_numpy()
            transform = (
                train_transform(self.image_size, **self.augment)
                if name == "train"
                else eval_transform(self.image_size)
            )
            skip_report = (
                self.file_report.skipped
                if name == "train" and self.file_report.on_bad_image == "skip"
                else None
            )
            self.datasets[name] = ChestXrayDataset(
                table[rows],
                labels[rows],
                self.pathologies,
                transform=transform,
                skip_report=skip_report,
                cache=self.image_cache,
                cache_rows=None if cache_rows is None else cache_rows[rows],
            )
        sizes = {name: len(ds) for name, ds in self.datasets.items()}
        log.info("split sizes: %s", sizes)
        # With test=true an empty test split is found here, before training, not after it.
        for name in ("train", "val", "test") if self.require_test else ("train", "val"):
            if sizes[name] == 0:
                raise DataError(
                    f"the {name} split has no images (split sizes {sizes}); check data.split and "
                    "data.view_position"
                )

    def _check_files(
        self,
        table: pd.DataFrame,
        labels: np.ndarray,
        csv: str,
        unmatched: pd.DataFrame | None = None,
    ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray | None]:
        """Find every missing (no ``path``) and unusable file in one pass, then stop listing all
        of them and the images one table names and another lacks (``unmatched``), per
        ``missing_images`` / ``on_bad_image``, or leave them out."""
        missing = table["path"].isna().to_numpy()
        present = table[~missing].reset_index(drop=True)
        self.image_cache, cache_rows = find_cache(
            self.cache_mode, self.cache_dir, self.cache_size, self.image_size,
            self.cache_names(present), present["path"], self.root,
        ) or (None, None)  # fmt: skip
        entries = None if cache_rows is None else self.image_cache.index.iloc[cache_rows]
        problems, usable = find_file_problems(
            table, self.root, entries, self.check_images, self.decode_check
        )
        problems = with_unmatched(problems, unmatched)
        writer = self.trainer is None or self.trainer.global_rank == 0  # one writer per run
        self.file_report.settle(problems, len(table), csv, writer)
        labels = labels[~missing][usable]
        if cache_rows is not None:
            cache_rows = cache_rows[usable]
        return present[usable].reset_index(drop=True), labels, cache_rows

    def pos_weight(self) -> np.ndarray:
        """Per-class negatives/positives on the training split's labelled images (1 where a
        class has no positives)."""
        labels = self.datasets["train"].labels
        positives = (labels > 0.5).sum(axis=0)
        negatives = (labels < 0.5).sum(axis=0)  # NaN (not labelled) is neither
        return np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0).astype(np.float32)

    def _data_device(self) -> torch.device:
        if self.trainer is not None:
            return self.trainer.strategy.root_device
        return detect_caps().device

    def _device_data(self, name: str) -> DeviceImages | None:
        """``name``'s images on the training device when the device path is chosen, else None."""
        if self.loader_kind is None:
            self.loader_kind = pick_loader(
                self.loader_mode, self.image_cache is not None,
                sum(len(d) for d in self.datasets.values()), self.image_size, self.num_classes,
                self._data_device(), self.device_memory_share,
                self.trainer.world_size if self.trainer is not None else 1,
                f"chexnet-prepare root={self.root} size={self.image_size}",
            )  # fmt: skip
        if self.loader_kind != "device":
            return None
        if name not in self.on_device:
            dataset = self.datasets[name]
            self.on_device[name] = load_split(
                dataset.cache, dataset.cache_rows, dataset.labels, dataset.table[IMAGE].tolist(),
                self.image_size, self._data_device(),
            )  # fmt: skip
        return self.on_device[name]

    @property
    def process_batch_size(self) -> int:
        """This process's share of ``batch_size`` (the global training batch) under DDP."""
        world_size = self.trainer.world_size if self.trainer is not None else 1
        return split_global_batch(self.batch_size, world_size)

    def _loader(self, name: str, shuffle: bool) -> DataLoader | DeviceLoader:
        if name not in self.datasets:
            self.setup()
        dataset = self.datasets[name]
        if len(dataset) == 0:
            raise DataError(f"the {name} split has no images; check data.split")
        batch_size = self.process_batch_size if shuffle else self.eval_batch_size
        if (on_device := self._device_data(name)) is not None:
            return DeviceLoader(
                on_device,
                batch_size,
                shuffle=shuffle,
                seed=self.seed,
                augment=BatchAugment(**self.augment) if shuffle else None,  # training only
                drop_last=shuffle and len(dataset) > batch_size,
            )
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=pin_memory(self.pin_memory, detect_caps()),
            persistent_workers=self.num_workers > 0,
            drop_last=shuffle and len(dataset) > batch_size,
        )

    def eval_dataloader(
        self, split: str, image_size: int | None = None
    ) -> DataLoader | DeviceLoader:
        """Deterministic, ordered batches of ``split``, optionally resized to another size (TTA)."""
        if split not in self.datasets:
            self.setup()
        if image_size is None or image_size == self.image_size:
            if split != "train" or self._device_data(split) is not None:
                return self._loader(split, shuffle=False)  # unaugmented on either path
        source = self.datasets[split]
        resize = eval_transform(image_size or self.image_size)  # never training augmentation here
        size = image_size or self.image_size
        cached = source.cache is not None and source.cache.size >= size
        dataset = ChestXrayDataset(
            source.table,
            source.labels,
            source.pathologies,
            resize,
            skip_report=source.skip_report,  # the training split skips here as it did in training
            cache=source.cache if cached else None,
            cache_rows=source.cache_rows if cached else None,
        )
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            num_workers=self.num_workers,
            pin_memory=pin_memory(self.pin_memory, detect_caps()),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def split_global_batch(batch_size: int, world_size: int) -> int:
    """``data.batch_size`` is the global training batch (the paper's 16 stays 16 on 8 GPUs, at the
    same learning rate); each of ``world_size`` processes loads its share."""
    if world_size < 1 or batch_size % world_size:
        raise ConfigError(
            f"data.batch_size={batch_size} is the global batch and must divide evenly across the "
            f"{world_size} training processes; use a multiple of {world_size} (e.g. "
            f"{max(world_size, batch_size // world_size * world_size)})"
        )
    return batch_size // world_size
