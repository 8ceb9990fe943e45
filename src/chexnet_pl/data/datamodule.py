"""LightningDataModule: NIH table → view filter → patient-level split → images → datasets."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from chexnet_pl.data.batch_augment import BatchAugment
from chexnet_pl.data.cache import ImageCache, StaleCache, cache_folder, check_sources, open_cache
from chexnet_pl.data.dataset import NIHChestXray
from chexnet_pl.data.device_loader import (
    LOADERS,
    DeviceImages,
    DeviceLoader,
    bytes_needed,
    choose_loader,
    load_split,
    resolve_num_workers,
)
from chexnet_pl.data.image_check import find_bad_images
from chexnet_pl.data.images import find_images
from chexnet_pl.data.nih_table import IMAGE, VIEW, find_data_entry, label_matrix, read_data_entry
from chexnet_pl.data.splits import SPLITS, make_split
from chexnet_pl.data.transforms import eval_transform, train_transform
from chexnet_pl.errors import DataError
from chexnet_pl.labels import class_names

log = logging.getLogger(__name__)

VIEWS = ("all", "PA", "AP")
MISSING_POLICIES = ("error", "skip")
CACHE_MODES = ("auto", "off", "required")


class NIHDataModule(pl.LightningDataModule):
    """NIH ChestX-ray14 as released (or the synthetic demo in the same format).

    Args:
        root: the download folder (CSV, split lists, ``images/`` or ``images_NNN/images/``).
        csv: the metadata CSV; found in ``root`` when not given.
        include_no_finding: 15 outputs (14 findings + No Finding) when true, else 14.
        split: ``method`` (official | patient | file), ``val_fraction``, ``fractions``, ``file``, ``seed``.
        view_position: all | PA | AP.
        missing_images: error (stop, naming the missing files) or skip (use only images present).
        augment: keyword arguments of ``train_transform``.
        cache: auto (read the pre-resized cache of ``chexnet-prepare`` when one
            is valid for these images, else decode the PNGs), off, or required (stop when there
            is no valid cache). A stale or partial cache is never used.
        cache_dir: where ``prepare`` wrote it (default ``<root>/prepared``); ``cache_size``: which
            size to use (default: the smallest prepared size ≥ ``image_size``).
        synthetic: keyword arguments of ``generate_synthetic_nih``; when set, ``prepare_data``
            writes that dataset into ``root`` if it is not there yet.
        num_workers: DataLoader workers, or auto (the usable cores − 1, at most 16).
        loader: auto, workers (DataLoader) or device (``data.device_loader``: the split's cached
            images held on the training device). auto picks device when a valid cache covers
            the images and they fit in ``device_memory_share`` of the device's free memory (of
            the available RAM on a CPU).
        seed: seeds the device path's per-epoch order and augmentation (the run's ``seed``).
    """

    def __init__(
        self,
        root: str,
        csv: str | None = None,
        include_no_finding: bool = True,
        split: Mapping[str, Any] | None = None,
        view_position: str = "all",
        image_size: int = 224,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int | str = "auto",
        pin_memory: bool = True,
        missing_images: str = "error",
        on_bad_image: str = "error",
        check_images: bool = True,
        report_dir: str | None = None,
        require_test: bool = False,
        augment: Mapping[str, Any] | None = None,
        synthetic: Mapping[str, Any] | None = None,
        cache: str = "auto",
        cache_dir: str | None = None,
        cache_size: int | None = None,
        loader: str = "auto",
        device_memory_share: float = 0.5,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        # Plain values, stored in checkpoints so evaluation can rebuild the same data and split.
        self.save_hyperparameters(logger=False)
        if view_position not in VIEWS:
            raise DataError(f"data.view_position={view_position!r}; use one of {VIEWS}")
        if missing_images not in MISSING_POLICIES:
            raise DataError(
                f"data.missing_images={missing_images!r}; use one of {MISSING_POLICIES}"
            )
        if on_bad_image not in MISSING_POLICIES:
            raise DataError(f"data.on_bad_image={on_bad_image!r}; use one of {MISSING_POLICIES}")
        if cache not in CACHE_MODES:
            raise DataError(f"data.cache={cache!r}; use one of {CACHE_MODES}")
        if loader not in LOADERS:
            raise DataError(f"data.loader={loader!r}; use one of {LOADERS}")
        if not 0 < float(device_memory_share) <= 1:
            raise DataError(
                f"data.device_memory_share={device_memory_share!r}; use a share in (0, 1]"
            )
        self.root = Path(root).expanduser()
        self.csv = Path(csv).expanduser() if csv else None
        self.pathologies = class_names(include_no_finding)
        self.split_args = dict(split or {"method": "official"})
        self.view_position = view_position
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        try:
            self.num_workers = resolve_num_workers(num_workers)
        except ValueError as exc:
            raise DataError(str(exc)) from exc
        if num_workers != "auto" and self.num_workers < int(num_workers):
            log.info(
                "data.num_workers=%s capped at this machine's %d CPU cores",
                num_workers,
                self.num_workers,
            )
        self.pin_memory = bool(pin_memory)
        self.missing_images = missing_images
        self.on_bad_image = on_bad_image
        self.check_images = bool(check_images)
        self.report_dir = Path(report_dir) if report_dir else None
        self.require_test = bool(require_test)
        self.augment = dict(augment or {})
        self.synthetic = dict(synthetic) if synthetic else None
        self.cache_mode = cache
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else self.root / "prepared"
        self.cache_size = int(cache_size) if cache_size else None
        self.image_cache: ImageCache | None = None
        self.table: pd.DataFrame | None = None
        self.labels: np.ndarray | None = None
        self.datasets: dict[str, NIHChestXray] = {}
        self.loader_mode, self.device_memory_share = loader, float(device_memory_share)
        self.seed = int(seed if seed is not None else self.split_args.get("seed") or 0)
        self.loader_kind: str | None = None  # workers | device, chosen at the first loader
        self.on_device: dict[str, DeviceImages] = {}

    @property
    def num_classes(self) -> int:
        return len(self.pathologies)

    def prepare_data(self) -> None:
        if self.synthetic is not None:
            from chexnet_pl.data.synthetic import ensure_synthetic_nih

            ensure_synthetic_nih(self.root, **self.synthetic)
            if self.cache_mode != "off":  # the demo takes the fast path too
                from chexnet_pl.data.prepare import build_cache

                build_cache(self.root, self.image_size, self.cache_dir, workers=1, progress=False)

    def setup(self, stage: str | None = None) -> None:
        if self.table is not None:
            return
        csv = self.csv or find_data_entry(self.root)
        table = read_data_entry(csv)
        labels = label_matrix(table["Finding Labels"], self.pathologies, source=csv)
        log.info("read %d rows from %s", len(table), csv)

        # Split first, on the whole table, so split lists are checked against the release as is.
        args = {k: v for k, v in self.split_args.items() if k != "method"}
        table["split"] = make_split(
            table, self.split_args.get("method", "official"), self.root, **args
        )
        if self.view_position != "all":
            keep = (table[VIEW] == self.view_position).to_numpy()
            log.info(
                "view_position=%s keeps %d of %d images", self.view_position, keep.sum(), len(table)
            )
            table, labels = table[keep].reset_index(drop=True), labels[keep]
        table, labels = self._attach_paths(table, labels, csv)
        cache_rows = self._open_cache(table)
        if cache_rows is not None:
            # prepare decoded every image in full: the ones it could not read are the bad ones.
            entries = self.image_cache.index.iloc[cache_rows]
            is_bad = (entries["status"] != "ok").to_numpy()
            bad = dict(
                zip(table.loc[is_bad, "path"].astype(str), entries["error"][is_bad], strict=True)
            )
            keep = self._drop_bad_images(table, bad)
        else:
            keep = (
                self._drop_bad_images(
                    table, dict(find_bad_images(table["path"].astype(str).tolist()))
                )
                if self.check_images
                else None
            )
        if keep is not None:
            table, labels = table[keep].reset_index(drop=True), labels[keep]
            cache_rows = None if cache_rows is None else cache_rows[keep]

        self.table, self.labels = table, labels
        for name in SPLITS:
            rows = (table["split"] == name).to_numpy()
            transform = (
                train_transform(self.image_size, **self.augment)
                if name == "train"
                else eval_transform(self.image_size)
            )
            skip_report = (
                self._skip_report if name == "train" and self.on_bad_image == "skip" else None
            )
            self.datasets[name] = NIHChestXray(
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

    def _attach_paths(
        self, table: pd.DataFrame, labels: np.ndarray, csv: Path
    ) -> tuple[pd.DataFrame, np.ndarray]:
        """Add a ``path`` column for every split row; missing files per ``missing_images``."""
        used = table["split"].notna().to_numpy()
        table, labels = table[used].reset_index(drop=True), labels[used]
        on_disk = find_images(self.root)
        table["path"] = table[IMAGE].map(on_disk)
        missing = table["path"].isna().to_numpy()
        if missing.any():
            examples = table.loc[missing, IMAGE].head(5).tolist()
            if not on_disk:
                raise DataError(
                    f"no images under {self.root}: expected {self.root}/images/*.png or "
                    f"{self.root}/images_NNN/images/*.png"
                )
            if self.missing_images == "error":
                raise DataError(
                    f"{missing.sum()} of {len(table)} images listed in {csv} are not under "
                    f"{self.root}, e.g. {examples}. If the download is partial, set "
                    "data.missing_images=skip to use only the images present."
                )
            log.warning(
                "data.missing_images=skip: leaving out %d of %d listed images not on disk (e.g. %s)",
                missing.sum(),
                len(table),
                examples,
            )
            table, labels = table[~missing].reset_index(drop=True), labels[~missing]
        return table, labels

    @property
    def _skip_report(self) -> Path:
        return (self.report_dir or Path.cwd()) / "skipped_images.csv"

    def _open_cache(self, table: pd.DataFrame) -> np.ndarray | None:
        """The cache rows of ``table`` when a valid cache covers it (``data.cache``), else None."""
        if self.cache_mode == "off":
            return None
        if self.cache_size:
            if self.cache_size < self.image_size:
                raise DataError(
                    f"data.cache_size={self.cache_size} is smaller than data.image_size="
                    f"{self.image_size}: the images would be upsampled. Prepare a cache of at "
                    "least that size, or leave data.cache_size unset."
                )
            sizes = [self.cache_size]
        else:
            prepared = self.cache_dir.glob("*px") if self.cache_dir.is_dir() else []
            sizes = sorted(
                int(p.name[:-2])
                for p in prepared
                if p.name[:-2].isdigit() and int(p.name[:-2]) >= self.image_size
            )
        problems = []
        for size in sizes:
            folder = cache_folder(self.cache_dir, size)
            try:
                cache = open_cache(folder, size)
                rows = check_sources(cache, table[IMAGE], table["path"])
            except StaleCache as exc:
                problems.append(str(exc))
                continue
            log.info("reading %d images from the %d px cache in %s", len(table), size, folder)
            self.image_cache = cache
            return rows
        build = f"chexnet-prepare root={self.root} size={self.cache_size or self.image_size}"
        if self.cache_dir != self.root / "prepared":
            build += f" cache_dir={self.cache_dir}"
        found = (
            "; ".join(problems)
            or f"no prepared cache of ≥ {self.image_size} px in {self.cache_dir}"
        )
        if self.cache_mode == "required":
            raise DataError(f"data.cache=required, but {found}. Build it with: {build}")
        if problems:
            log.warning(
                "not using the image cache: %s. Decoding PNGs instead; rebuild it with: %s",
                found,
                build,
            )
        else:
            log.info("decoding PNGs (%s); for faster loading run once: %s", found, build)
        return None

    def _drop_bad_images(self, table: pd.DataFrame, bad: dict[str, str]) -> np.ndarray | None:
        """Rows to keep given unusable files (``bad``: path → reason), per ``on_bad_image``;
        None when all are usable."""
        if not bad:
            return None
        paths = table["path"].astype(str)
        is_bad = paths.isin(bad).to_numpy()
        listing = pd.DataFrame({"Image Index": table.loc[is_bad, IMAGE], "path": paths[is_bad]})
        listing["reason"] = listing["path"].map(bad)
        listing["found"] = "before training"
        if self.on_bad_image == "skip":
            report = self._skip_report
        else:
            report = (self.report_dir or Path.cwd()) / "bad_images.csv"
        report.parent.mkdir(parents=True, exist_ok=True)
        listing.to_csv(report, index=False)
        lines = "\n".join(f"  {path}: {reason}" for path, reason in list(bad.items())[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        if self.on_bad_image == "error":
            raise DataError(
                f"{len(bad)} image file(s) cannot be used (all listed in {report}):\n{lines}{more}\n"
                "Replace them, or set data.on_bad_image=skip to train without them."
            )
        log.warning(
            "data.on_bad_image=skip: leaving out %d unusable image(s), listed in %s:\n%s%s",
            len(bad), report, lines, more,
        )  # fmt: skip
        return ~is_bad

    def pos_weight(self) -> np.ndarray:
        """Per-class negatives/positives on the training split (1 where a class has no positives)."""
        labels = self.datasets["train"].labels
        positives = labels.sum(axis=0)
        negatives = len(labels) - positives
        return np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0).astype(np.float32)

    def _data_device(self) -> torch.device:
        if self.trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def _device_data(self, name: str) -> DeviceImages | None:
        """``name``'s images on the training device when the device path is chosen, else None."""
        if self.loader_kind is None:
            device = self._data_device()
            rows = sum(len(d) for d in self.datasets.values())
            try:
                self.loader_kind, why = choose_loader(
                    self.loader_mode,
                    self.image_cache is not None,
                    bytes_needed(rows, self.image_size, self.num_classes),
                    device,
                    self.device_memory_share,
                    self.trainer.world_size if self.trainer is not None else 1,
                )
            except ValueError as exc:
                build = f"chexnet-prepare root={self.root} size={self.image_size}"
                raise DataError(
                    f"data.loader=device cannot be used: {exc}. Use data.loader=workers (or "
                    f"auto), or prepare a cache with: {build}"
                ) from exc
            log.info("data loading: %s (%s)", self.loader_kind, why)
        if self.loader_kind != "device":
            return None
        if name not in self.on_device:
            dataset = self.datasets[name]
            self.on_device[name] = load_split(
                dataset.cache, dataset.cache_rows, dataset.labels, dataset.table[IMAGE].tolist(),
                self.image_size, self._data_device(),
            )  # fmt: skip
        return self.on_device[name]

    def _loader(self, name: str, shuffle: bool) -> DataLoader | DeviceLoader:
        if name not in self.datasets:
            self.setup()
        dataset = self.datasets[name]
        if len(dataset) == 0:
            raise DataError(f"the {name} split has no images; check data.split")
        if (on_device := self._device_data(name)) is not None:
            return DeviceLoader(
                on_device,
                self.batch_size if shuffle else self.eval_batch_size,
                shuffle=shuffle,
                seed=self.seed,
                augment=BatchAugment(**self.augment) if shuffle else None,  # training only
                drop_last=shuffle and len(dataset) > self.batch_size,
            )
        return DataLoader(
            dataset,
            batch_size=self.batch_size if name == "train" else self.eval_batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            drop_last=shuffle and len(dataset) > self.batch_size,
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
        dataset = NIHChestXray(
            source.table,
            source.labels,
            source.pathologies,
            resize,
            cache=source.cache if cached else None,
            cache_rows=source.cache_rows if cached else None,
        )
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
