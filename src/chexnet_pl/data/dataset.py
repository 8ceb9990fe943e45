"""A map-style dataset over the rows of any dataset's table: dict samples with the image name for
later joins; labels may be NaN (not labelled)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from chexnet_pl.data.cache import ImageCache
from chexnet_pl.data.images import read_gray
from chexnet_pl.data.nih_table import IMAGE
from chexnet_pl.errors import DataError, ImageReadError

log = logging.getLogger(__name__)


class ChestXrayDataset(Dataset):
    """Rows of the metadata table with a ``path`` column and a row-aligned float32 label matrix.

    A sample is ``{"img": 1xHxW uint8, "lab": float32[C], "idx": int, "name": str}``;
    ``pathologies`` names the label columns, ``table`` holds the metadata row-aligned.
    """

    def __init__(
        self,
        table: pd.DataFrame,
        labels: np.ndarray,
        pathologies: Sequence[str],
        transform: Callable | None = None,
        skip_report: str | Path | None = None,
        cache: ImageCache | None = None,
        cache_rows: np.ndarray | None = None,
    ) -> None:
        if len(table) != len(labels):
            raise ValueError(f"table has {len(table)} rows but labels has {len(labels)}")
        self.table = table.reset_index(drop=True)
        self.labels = np.ascontiguousarray(labels, dtype=np.float32)
        self.pathologies = list(pathologies)
        self.transform = transform
        # Where an image that fails to decode mid-epoch is recorded before it is replaced by the
        # next readable one (training only; None: the error stops the run, naming the file).
        self.skip_report = Path(skip_report) if skip_report else None
        self._paths = self.table["path"].astype(str).tolist()
        self._names = self.table[IMAGE].tolist()
        # With a cache (``data.prepare``), images come pre-decoded from its memory map.
        self.cache = cache
        self.cache_rows = None if cache is None else np.asarray(cache_rows, dtype=np.int64)
        if cache is not None and len(self.cache_rows) != len(self._paths):
            raise ValueError(f"{len(self._paths)} rows but {len(self.cache_rows)} cache rows")

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> dict:
        self._seed_transform()
        return self._sample(*self._load(index))

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """A whole batch (the DataLoader calls this when it exists), with one augmentation seed
        per batch: reseeding albumentations costs as much as augmenting a cached image."""
        self._seed_transform()
        return [self._sample(*self._load(index)) for index in indices]

    def _seed_transform(self) -> None:
        # Albumentations draws from its own generators, seeded from OS entropy unless told
        # otherwise; seeding them from torch's generator (seeded per worker by Lightning and
        # saved in checkpoints) makes augmentation reproducible and resumable.
        if self.transform is not None:
            self.transform.set_random_seed(int(torch.randint(0, 2**31 - 1, (1,)).item()))

    def _load(self, index: int) -> tuple[int, np.ndarray]:
        """The row actually used (a later one when skipping unreadable files) and its image."""
        if self.cache is not None:
            return index, self.cache.read(self.cache_rows[index])
        for attempt in range(min(len(self), 100)):
            row = (index + attempt) % len(self)
            try:
                return row, read_gray(self._paths[row])
            except ImageReadError as exc:
                if self.skip_report is None:
                    raise
                self._record_skip(row, exc)
        raise DataError(
            f"100 images in a row from {self._paths[index]} on could not be read; see {self.skip_report}"
        )

    def _sample(self, index: int, image: np.ndarray) -> dict:
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        return {
            "img": torch.from_numpy(np.ascontiguousarray(image)).unsqueeze(0),
            "lab": torch.from_numpy(self.labels[index]),
            "idx": index,
            "name": self._names[index],
        }

    def _record_skip(self, index: int, error: ImageReadError) -> None:
        log.warning(
            "skipping unreadable image %s: %s (recorded in %s)",
            error.path,
            error.reason,
            self.skip_report,
        )
        split = self.table["split"].iloc[index] if "split" in self.table else ""
        reason = f"failed to decode during training: {error.reason}"
        name = self._names[index]
        if self.skip_report.is_file() and any(  # one row per image (another epoch, the OOD fit)
            line.startswith(f"{name},") for line in self.skip_report.read_text().splitlines()
        ):
            return
        self.skip_report.parent.mkdir(parents=True, exist_ok=True)
        with open(self.skip_report, "a") as report:  # one short line per write: safe across workers
            if report.tell() == 0:  # the data module writes the header; this is a fallback
                report.write("Image Index,split,reason\n")
            report.write(f"{name},{split},{_csv_field(reason)}\n")


def _csv_field(text: str) -> str:
    """One CSV field: quoted (inner quotes doubled) when it holds a comma, quote or newline."""
    text = text.replace("\n", " ")
    if any(c in text for c in ',"'):
        return '"' + text.replace('"', '""') + '"'
    return text
