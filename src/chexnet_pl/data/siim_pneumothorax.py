"""SIIM-ACR Pneumothorax Segmentation (SIIM, ACR and Kaggle, 2019): ``data=siim_pneumothorax``.

NIH ChestX-ray14 images with radiologists' pneumothorax masks. A download holds ``train-rle.csv``
(``.csv.gz`` read too) and the DICOMs, ``<ImageId>.dcm``, nested by study and series
(``dicom-images-train/<study>/<series>/<ImageId>.dcm``): they are found by name anywhere under the
root, the tree indexed once (two files of one name are refused, naming both).

The table has ``ImageId`` and ``EncodedPixels`` (the release writes the header ``" EncodedPixels"``,
with a leading space): ``-1`` where the image has no pneumothorax, else one mask of the 1024×1024
image in Kaggle's relative run-length encoding — pairs (start, length), each start counted from
the end of the previous run (the first from the image's first pixel), pixels numbered
column-major (down the first column, then the next). An image with several masks has several rows;
its mask is their union (``rle_decode``, ``rle_encode``; ``SIIMPneumothoraxDataModule.mask``).

- **Label**: ``Pneumothorax`` (1: the image has a mask), NIH's output of the same name.
- **Sex, age, view and patient** come from each DICOM's header (read without its pixels).
- **Split**: no official split of the labelled images; by the headers' ``PatientID`` (the image's
  own ``ImageId`` where a file has none, or with ``data.headers=false``), or from a file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chexnet_pl.data.csv_table import read_csv_table
from chexnet_pl.data.datamodule import ChestXrayDataModule
from chexnet_pl.data.dicom.releases import check_split_method, labelled_release, read_headers
from chexnet_pl.data.labelled_images import LabelledImages
from chexnet_pl.data.nih_table import IMAGE
from chexnet_pl.data.settings import VIEWS
from chexnet_pl.errors import DataError
from chexnet_pl.validation import Problems

log = logging.getLogger(__name__)

LABEL = "Pneumothorax"
ID, RLE = "ImageId", "EncodedPixels"  # the release writes " EncodedPixels"; headers are stripped
NO_MASK = "-1"
TABLE_NAMES = ("train-rle.csv", "train-rle.csv.gz", "siim-pneumothorax-train-rle.csv.gz")
MASK_SIZE = 1024  # the release's images: the RLE counts these pixels
DICOM_SUFFIX = ".dcm"


def rle_runs(text: str, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Kaggle's relative RLE → (absolute start, length) of each run, pixels numbered column-major
    in a ``height``×``width`` image. ValueError saying what is wrong: a token that is not a whole
    number, an odd count, a negative start, a run of no pixels, a run past the image's end."""
    tokens = str(text).split()
    try:
        values = np.array([int(t) for t in tokens], dtype=np.int64)
    except ValueError:
        bad = next(t for t in tokens if not t.lstrip("-").isdigit())
        raise ValueError(f"{bad!r} is not a whole number") from None
    if len(values) % 2:
        raise ValueError(f"{len(values)} numbers, an odd count: the RLE is (start, length) pairs")
    starts, lengths = values[0::2], values[1::2]
    if (starts < 0).any():
        raise ValueError(f"a negative start ({int(starts[starts < 0][0])})")
    if (lengths < 1).any():
        raise ValueError(f"a run of length {int(lengths[lengths < 1][0])}")
    ends = np.cumsum(starts + lengths)
    if len(ends) and ends[-1] > height * width:
        run = int(np.flatnonzero(ends > height * width)[0])
        raise ValueError(
            f"run {run + 1} ends at pixel {int(ends[run])}, past the end of the {height}×{width} "
            f"image ({height * width} pixels)"
        )
    return ends - lengths, lengths


def rle_decode(text: str, height: int = MASK_SIZE, width: int = MASK_SIZE) -> np.ndarray:
    """One mask (``height``×``width`` bool) from Kaggle's relative, column-major RLE; ``-1`` (no
    pneumothorax) is an empty mask. ValueError as ``rle_runs``."""
    flat = np.zeros(height * width, dtype=bool)
    if str(text).strip() != NO_MASK:
        for start, length in zip(*rle_runs(text, height, width), strict=True):
            flat[start : start + length] = True
    return flat.reshape(width, height).T  # column-major: pixel i is (i % height, i // height)


def rle_encode(mask: np.ndarray) -> str:
    """A 2-D mask → Kaggle's relative, column-major RLE (``-1`` for an empty mask): the inverse of
    ``rle_decode``."""
    flat = np.asarray(mask, dtype=bool).T.ravel()
    padded = np.concatenate([[False], flat, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[0::2], edges[1::2]
    if not len(starts):
        return NO_MASK
    relative = starts - np.concatenate([[0], ends[:-1]])
    return " ".join(f"{s} {n}" for s, n in zip(relative, ends - starts, strict=True))


def find_rle_table(root: Path, given: str | None = None) -> Path:
    """``data.csv``, else the release's ``train-rle.csv`` (or ``.csv.gz``) in ``root``."""
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise DataError(f"data.csv={path} is not a file")
        return path
    for name in TABLE_NAMES:
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"no train-rle.csv (nor train-rle.csv.gz) in {root}: point data.root at the SIIM-ACR "
        "download (the folder with it and the DICOM tree), or give data.csv="
    )


def read_siim_rle(
    path: str | Path, height: int = MASK_SIZE, width: int = MASK_SIZE
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The RLE table checked → (images: ``ImageId`` and ``Pneumothorax`` 0/1 per image, in the
    table's order; masks: ``Image Index, EncodedPixels`` per mask row). Every mask's RLE is
    checked against the image size; an image with both ``-1`` and a mask is refused. Errors name
    the line and value."""
    path = Path(path)
    table = read_csv_table(
        path, "SIIM-ACR RLE table", (ID, RLE),
        f"SIIM-ACR's train-rle.csv has ['{ID}', ' {RLE}'].", {ID: str, RLE: str},
    )  # fmt: skip
    ids = table[ID].fillna("").str.strip()
    encoded = table[RLE].fillna("").str.strip()
    for column, values in ((ID, ids), (RLE, encoded)):
        blank = np.flatnonzero((values == "").to_numpy())
        if len(blank):
            raise DataError(
                f"{path}: empty '{column}' on line(s) {[int(i) + 2 for i in blank[:5]]}"
                + ("; write -1 for an image without pneumothorax" if column == RLE else "")
            )
    positive = (encoded != NO_MASK).to_numpy()
    for i in np.flatnonzero(positive):
        try:
            rle_runs(encoded.iloc[i], height, width)
        except ValueError as exc:
            shown = encoded.iloc[i] if len(encoded.iloc[i]) <= 60 else encoded.iloc[i][:57] + "..."
            raise DataError(
                f"{path}, line {int(i) + 2}: the mask of {ids.iloc[i]} ({shown!r}) is not a "
                f"relative RLE of a {height}×{width} image: {exc}"
            ) from None
    per_image = pd.Series(positive, index=ids.to_numpy()).groupby(level=0, sort=False)
    mixed = per_image.transform("nunique").to_numpy() > 1
    if mixed.any():
        name = ids[mixed].iloc[0]
        lines = [int(i) + 2 for i in np.flatnonzero((ids == name).to_numpy())[:5]]
        raise DataError(
            f"{path}: {name} has both -1 (no pneumothorax) and a mask (lines {lines}); an image "
            "has masks or -1"
        )
    images = pd.DataFrame({ID: ids, LABEL: positive.astype(np.int64)})
    images = images.drop_duplicates(ID).reset_index(drop=True)
    masks = pd.DataFrame({IMAGE: ids[positive].to_numpy(), RLE: encoded[positive].to_numpy()})
    return images, masks


def index_dicoms(root: str | Path, skip: tuple[str, ...] = ("prepared",)) -> dict[str, str]:
    """Every ``*.dcm`` below ``root`` by its name without the suffix (hidden folders and ``skip``
    are not entered); a name found twice is refused with both paths."""
    found: dict[str, str] = {}
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d not in skip)
        for name in files:
            if name.lower().endswith(DICOM_SUFFIX):
                key, path = name[: -len(DICOM_SUFFIX)], os.path.join(folder, name)
                if key in found:
                    raise DataError(
                        f"two DICOMs named {name}: {found[key]} and {path}. An ImageId names one "
                        "image: remove one copy"
                    )
                found[key] = path
    log.info("found %d DICOMs below %s", len(found), root)
    return found


class SIIMPneumothoraxDataModule(ChestXrayDataModule):
    """SIIM-ACR Pneumothorax: the ``Pneumothorax`` label and its masks (``masks``, ``mask``).

    Args:
        root: the download folder (``train-rle.csv[.gz]`` and the DICOMs at any depth).
        csv: the RLE table when not in ``root``.
        headers: read sex, age, view and PatientID from each DICOM's header (else none; the split
            is then by image).
        split: ``method`` (patient | file), ``fractions``, ``file``, ``seed``.
        view_position: frontal (all of SIIM) | PA | AP | all.
        label_from_outputs: ``{label: [outputs]}`` for external validation (see RSNA's); empty:
            Pneumothorax is scored against the output of that name.
        The other arguments are ``ChestXrayDataModule``'s.
    """

    pathologies = [LABEL]

    def __init__(
        self,
        root: str,
        csv: str | None,
        headers: bool,
        split: Mapping[str, Any] | None,
        view_position: str,
        label_from_outputs: Mapping[str, Sequence[str]] | None,
        **settings: Any,
    ) -> None:
        super().__init__(root, **settings)
        self.split_args = dict(split or {})
        check_split_method(self.split_args, "SIIM-ACR Pneumothorax")
        self.csv, self.headers = csv, bool(headers)
        self.view_position = view_position
        self.label_from_outputs = {k: list(v) for k, v in (label_from_outputs or {}).items()}
        self.masks: pd.DataFrame | None = None

    def check_settings(self, settings: Mapping[str, Any], problems: Problems) -> None:
        problems.choice("view_position", settings["view_position"], VIEWS)
        problems.flag("headers", settings["headers"])

    def read_labels(self) -> LabelledImages:
        rle_path = find_rle_table(self.root, self.csv)
        images, masks = read_siim_rle(rle_path)
        log.info("%s: %d images (%d with pneumothorax), %d masks", rle_path.name, len(images),
                 int(images[LABEL].sum()), len(masks))  # fmt: skip
        on_disk = index_dicoms(self.root)
        paths = [on_disk.get(name) for name in images[ID]]
        count = len(images)
        metadata = read_headers(paths if self.headers else [None] * count)
        patient = metadata["PatientID"].where(metadata["PatientID"] != "", images[ID])
        kept = labelled_release(
            images[ID].to_numpy(), patient.to_numpy(), metadata, paths,
            images[LABEL].to_numpy(np.float32)[:, None], str(rle_path), self.split_args,
            self.view_position, "SIIM-ACR",
        )  # fmt: skip
        self.masks = masks[masks[IMAGE].isin(set(kept.table[IMAGE]))].reset_index(drop=True)
        return kept

    def mask(self, image: str) -> np.ndarray:
        """``image``'s pneumothorax mask (1024×1024 bool): the union of its rows' masks."""
        if self.masks is None:
            self.setup()
        union = np.zeros((MASK_SIZE, MASK_SIZE), dtype=bool)
        for text in self.masks.loc[self.masks[IMAGE] == image, RLE]:
            union |= rle_decode(text)
        return union
