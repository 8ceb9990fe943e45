"""Chest X-ray datasets as torch ``Dataset``s (NIH, CheXpert, MIMIC-CXR, PadChest, VinDr-CXR, RSNA
Pneumonia, SIIM-ACR Pneumothorax), read exactly as training reads them: the same data
module (``conf/data/<dataset>.yaml``'s settings, the same tables, split, view filter, label
policy, image checks, cache and transforms), one split of it.

    from chexnet_pl.datasets import NIH
    test = NIH("/data/nih", split="test", image_size=224)
    image, label = test[0]          # uint8 1×224×224, float32 labels (NaN: not labelled)
    test.table.head()               # its rows: Image Index, Patient ID, path, split, ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.data import Dataset

from chexnet_pl.data.build import TARGET, build_datamodule
from chexnet_pl.data.splits import SPLITS
from chexnet_pl.errors import DataError


class ChestXrayDataset(Dataset):
    """One split of a dataset: ``(image, label)`` pairs with the split's rows in ``table``.

    Args:
        root: the dataset's folder, as ``data.root=`` takes it.
        split: ``train``, ``val`` or ``test`` (``train`` images are augmented, as in training).
        image_size: the square size images are resized to (area interpolation).
        **settings: other ``data.*`` settings of the dataset's config (``conf/data/``), e.g.
            ``split={"method": "patient"}``, ``view_position="PA"``, ``cache="off"``.

    Attributes:
        table: the split's rows (``Image Index``, ``Patient ID``, ``path``, ``split``, the
            dataset's metadata), in item order.
        labels: the split's label matrix (N × len(class_names), float32, NaN: not labelled).
        class_names: the label columns, in order.
        datamodule: the Lightning data module the split comes from (every split, its loaders).
    """

    target: str = ""

    def __init__(
        self, root: str | Path, split: str = "test", image_size: int = 224, **settings: Any
    ) -> None:
        if split not in SPLITS:
            raise DataError(f"split={split!r}; use one of {SPLITS}")
        values = {"num_workers": 0, "require_test": False, **settings}
        values |= {TARGET: self.target, "root": str(Path(root).expanduser()),
                   "image_size": image_size, "report_dir": None}  # fmt: skip
        self.datamodule = build_datamodule(values)
        self.datamodule.setup()
        self.split = split
        self._split = self.datamodule.datasets[split]
        self.table: pd.DataFrame = self._split.table
        self.labels = self._split.labels
        self.class_names: list[str] = list(self.datamodule.pathologies)

    def __len__(self) -> int:
        return len(self._split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The image (uint8 1×H×W, as the model takes it) and its labels (float32, NaN: unknown)."""
        sample = self._split[index]
        return sample["img"], sample["lab"]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.split}: {len(self)} images, {len(self.class_names)} labels)"


class NIH(ChestXrayDataset):
    """NIH ChestX-ray14 (``data=nih``): ``root`` holds ``Data_Entry_2017*.csv``, the split lists
    and ``images/*.png`` (or ``images_NNN/images``)."""

    target = "chexnet_pl.data.nih.NIHDataModule"


class CheXpert(ChestXrayDataset):
    """CheXpert v1.0 (``data=chexpert``): ``root`` holds ``CheXpert-v1.0-small/`` (or is it)."""

    target = "chexnet_pl.data.chexpert.CheXpertDataModule"


class MIMICCXR(ChestXrayDataset):
    """MIMIC-CXR-JPG v2 (``data=mimic_cxr``): ``root`` holds ``files/`` and the
    ``mimic-cxr-2.0.0-*.csv.gz`` tables."""

    target = "chexnet_pl.data.mimic.MimicCxrDataModule"


class PadChest(ChestXrayDataset):
    """PadChest (``data=padchest``): ``root`` holds the release's CSV (``.gz`` accepted) and the
    16-bit PNGs, flat or in the numbered folders (``ImageDir``). Labels: NIH's findings by
    default (``labels="all"`` for PadChest's own); ``label_source="physician"`` for the
    radiologist-labelled rows."""

    target = "chexnet_pl.data.padchest.PadChestDataModule"


class VinDrCXR(ChestXrayDataset):
    """VinDr-CXR (``data=vindr_cxr``) as Kaggle's VinBigData release: ``root`` holds
    ``train.csv`` and ``train/<image_id>.dicom``; an image's label is its 3 readers' vote
    (``reader_vote="majority"`` or ``"any"``)."""

    target = "chexnet_pl.data.vindr_cxr.VinDrCXRDataModule"


class RSNAPneumonia(ChestXrayDataset):
    """RSNA Pneumonia Detection Challenge (``data=rsna_pneumonia``): ``root`` holds
    ``stage_2_train_labels.csv`` (``.zip``/``.gz`` accepted) and
    ``stage_2_train_images/<patientId>.dcm``; one label, Lung Opacity."""

    target = "chexnet_pl.data.rsna_pneumonia.RSNAPneumoniaDataModule"


class SIIMPneumothorax(ChestXrayDataset):
    """SIIM-ACR Pneumothorax (``data=siim_pneumothorax``): ``root`` holds ``train-rle.csv``
    (``.gz`` accepted) and the DICOMs at any depth below it; one label, Pneumothorax."""

    target = "chexnet_pl.data.siim_pneumothorax.SIIMPneumothoraxDataModule"


__all__ = [
    "NIH", "CheXpert", "ChestXrayDataset", "MIMICCXR", "PadChest", "RSNAPneumonia",
    "SIIMPneumothorax", "VinDrCXR",
]  # fmt: skip
