"""A map-style dataset over NIH rows: dict samples with the image name for later joins."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from chexnet_pl.data.images import read_gray
from chexnet_pl.data.nih_table import IMAGE


class NIHChestXray(Dataset):
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
    ) -> None:
        if len(table) != len(labels):
            raise ValueError(f"table has {len(table)} rows but labels has {len(labels)}")
        self.table = table.reset_index(drop=True)
        self.labels = np.ascontiguousarray(labels, dtype=np.float32)
        self.pathologies = list(pathologies)
        self.transform = transform
        self._paths = self.table["path"].astype(str).tolist()
        self._names = self.table[IMAGE].tolist()

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> dict:
        image = read_gray(self._paths[index])
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        return {
            "img": torch.from_numpy(np.ascontiguousarray(image)).unsqueeze(0),
            "lab": torch.from_numpy(self.labels[index]),
            "idx": index,
            "name": self._names[index],
        }
