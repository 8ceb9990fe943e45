"""LightningDataModule: NIH table → view filter → patient-level split → images → datasets."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from chexnet_pl.data.dataset import NIHChestXray
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
        synthetic: keyword arguments of ``generate_synthetic_nih``; when set, ``prepare_data``
            writes that dataset into ``root`` if it is not there yet.
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
        num_workers: int = 4,
        pin_memory: bool = True,
        missing_images: str = "error",
        on_bad_image: str = "error",
        check_images: bool = True,
        report_dir: str | None = None,
        require_test: bool = False,
        augment: Mapping[str, Any] | None = None,
        synthetic: Mapping[str, Any] | None = None,
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
        self.root = Path(root).expanduser()
        self.csv = Path(csv).expanduser() if csv else None
        self.pathologies = class_names(include_no_finding)
        self.split_args = dict(split or {"method": "official"})
        self.view_position = view_position
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = min(int(num_workers), os.cpu_count() or 1)
        if self.num_workers < int(num_workers):
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
        self.table: pd.DataFrame | None = None
        self.labels: np.ndarray | None = None
        self.datasets: dict[str, NIHChestXray] = {}

    @property
    def num_classes(self) -> int:
        return len(self.pathologies)

    def prepare_data(self) -> None:
        if self.synthetic is not None:
            from chexnet_pl.data.synthetic import ensure_synthetic_nih

            ensure_synthetic_nih(self.root, **self.synthetic)

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
        if self.check_images:
            table, labels = self._drop_bad_images(table, labels)

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

    def _drop_bad_images(
        self, table: pd.DataFrame, labels: np.ndarray
    ) -> tuple[pd.DataFrame, np.ndarray]:
        """Check every used image's header and end (not a full decode) before training starts."""
        paths = table["path"].astype(str)
        bad = dict(find_bad_images(paths.tolist()))
        if not bad:
            return table, labels
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
        return table[~is_bad].reset_index(drop=True), labels[~is_bad]

    def pos_weight(self) -> np.ndarray:
        """Per-class negatives/positives on the training split (1 where a class has no positives)."""
        labels = self.datasets["train"].labels
        positives = labels.sum(axis=0)
        negatives = len(labels) - positives
        return np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0).astype(np.float32)

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        if name not in self.datasets:
            self.setup()
        dataset = self.datasets[name]
        if len(dataset) == 0:
            raise DataError(f"the {name} split has no images; check data.split")
        return DataLoader(
            dataset,
            batch_size=self.batch_size if name == "train" else self.eval_batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            drop_last=shuffle and len(dataset) > self.batch_size,
        )

    def eval_dataloader(self, split: str, image_size: int | None = None) -> DataLoader:
        """Deterministic, ordered batches of ``split``, optionally resized to another size (TTA)."""
        if split not in self.datasets:
            self.setup()
        if split != "train" and (image_size is None or image_size == self.image_size):
            return self._loader(split, shuffle=False)  # val and test already use the eval transform
        source = self.datasets[split]
        resize = eval_transform(image_size or self.image_size)  # never training augmentation here
        dataset = NIHChestXray(source.table, source.labels, source.pathologies, resize)
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
