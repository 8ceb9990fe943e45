"""Batched inference into a predictions table, and reading/writing that table.

The layout is reproduce-chexnet's: ``Image Index`` then ``prob_<Class>`` per output, so the
two projects' prediction files can be exchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as TF

from chexnet_pl.data.nih_table import IMAGE
from chexnet_pl.errors import ConfigError, DataError, shown
from chexnet_pl.files import atomic_write, file_sha256, write_bytes_atomic, write_json_atomic
from chexnet_pl.label_sets import finding_names
from chexnet_pl.models.precision import autocast_context, check_precision

log = logging.getLogger(__name__)

PROB = "prob_"
TTA_MODES = ("none", "hflip", "tencrop")
TENCROP_RESIZE = 256 / 224  # arnoweng/CheXNet: resize 256, ten 224 crops


def prob_columns(names: Sequence[str]) -> list[str]:
    return [PROB + name for name in names]


def tta_resize(image_size: int, tta: str) -> int:
    """The eval resize a TTA mode needs before it crops (ten-crop resizes larger, then crops)."""
    return int(round(image_size * TENCROP_RESIZE)) if tta == "tencrop" else image_size


def _probabilities(
    model: torch.nn.Module, images: torch.Tensor, tta: str, crop: int
) -> torch.Tensor:
    if tta == "none":
        return torch.sigmoid(model(images).float())
    if tta == "hflip":
        both = torch.cat([images, images.flip(-1)])
        probs = torch.sigmoid(model(both).float())
        return probs.view(2, len(images), -1).mean(0)
    if tta == "tencrop":
        crops = torch.cat(TF.ten_crop(images, [crop, crop]))  # (10·B)×1×crop×crop
        probs = torch.sigmoid(model(crops).float())
        return probs.view(10, len(images), -1).mean(0)
    raise ConfigError(f"unknown evaluation.tta {tta!r}; use one of {TTA_MODES}")


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    loader: DataLoader,
    names: Sequence[str],
    tta: str = "none",
    crop: int | None = None,
    precision: str = "auto",
) -> pd.DataFrame:
    """Probabilities for every image the loader yields, batch by batch (images are not kept)."""
    if tta not in TTA_MODES:
        raise ConfigError(f"unknown evaluation.tta {tta!r}; use one of {TTA_MODES}")
    check_precision(precision, "evaluation.precision")
    model.eval()
    device = next(model.parameters()).device
    rows, image_names = [], []
    with autocast_context(device, precision):
        for batch in loader:
            images = batch["img"].to(device, non_blocking=True)
            rows.append(_probabilities(model, images, tta, crop or images.shape[-1]).cpu().numpy())
            image_names.extend(batch["name"])
    probs = np.concatenate(rows) if rows else np.zeros((0, len(names)), np.float32)
    table = pd.DataFrame(probs, columns=prob_columns(names))
    table.insert(0, IMAGE, image_names)
    return table


def read_predictions(
    path: str | Path, known_images: pd.Index | None = None, labels: Sequence[str] | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """Read and check a predictions CSV; returns the table and the class names it scores.

    With ``labels`` (the data's label list), a column for each of its findings is required
    (``No Finding`` optional) and the names come in that order; without, every ``prob_`` column
    counts, in the file's order. Errors name the line, column and value.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"predictions file not found: {path}")
    try:
        table = pd.read_csv(path, dtype={IMAGE: str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot parse {path} as a CSV: {exc}") from exc
    table.columns = [str(c).strip() for c in table.columns]
    if IMAGE not in table.columns:
        raise DataError(f"{path} has no '{IMAGE}' column; its columns are {list(table.columns)}")
    if table.empty:
        raise DataError(
            f"{path} has a header and no rows: no predictions to score; give a file with a row "
            f"per image ('{IMAGE}', {PROB}<Class>...)"
        )
    if labels is not None:
        missing = sorted(c for c in prob_columns(finding_names(labels)) if c not in table.columns)
        if missing:
            raise DataError(
                f"{path} lacks {len(missing)} class column(s): {missing}. Expected '{IMAGE}' and "
                f"{PROB}<Class> for the data's {len(finding_names(labels))} findings ({PROB}No "
                "Finding optional)."
            )
        names = [n for n in labels if PROB + n in table.columns]
    else:
        names = [c[len(PROB) :] for c in table.columns if c.startswith(PROB)]
        if not names:
            raise DataError(
                f"{path} has no {PROB}<Class> column; its columns are {list(table.columns)}"
            )
    for column in prob_columns(names):
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna() | (values < 0) | (values > 1)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{path}, line {i + 2}, column {column}: {shown(table[column].iloc[i])} is not a probability "
                f"in [0, 1] ({int(bad.sum())} bad value(s) in that column)"
            )
        table[column] = values.astype(np.float64)
    dupes = table[IMAGE].duplicated()
    if dupes.any():
        raise DataError(f"{path}: image {table[IMAGE][dupes].iloc[0]!r} has more than one row")
    if known_images is not None:
        unknown = table.loc[~table[IMAGE].isin(known_images), IMAGE]
        if len(unknown):
            raise DataError(
                f"{path} has {len(unknown)} image name(s) not in the data's metadata, e.g. "
                f"{unknown.head(3).tolist()}. Is data.root the right dataset?"
            )
    return table[[IMAGE, *prob_columns(names)]], names


class PredictionCache:
    """Predictions stored beside a checkpoint's run (``<run>/predictions/``) so a second evaluation
    of the same checkpoint, split and settings reads them instead of running the model again."""

    def __init__(self, checkpoint: str | Path) -> None:
        self.checkpoint = Path(checkpoint)
        self.folder = self.checkpoint.resolve().parent.parent / "predictions"
        self._sha = None

    def _key(self, split: str, settings: dict) -> tuple[Path, dict]:
        if self._sha is None:
            self._sha = file_sha256(self.checkpoint)
        key = {"checkpoint_sha256": self._sha, "split": split, **settings}
        suffix = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
        return self.folder / f"{self.checkpoint.stem}_{split}_{suffix}.csv", key

    def load(
        self, split: str, settings: dict, expected_images: Sequence[str]
    ) -> pd.DataFrame | None:
        path, key = self._key(split, settings)
        meta = path.with_suffix(".json")
        if not (path.is_file() and meta.is_file()) or json.loads(meta.read_text()) != key:
            return None
        table = pd.read_csv(path, dtype={IMAGE: str})
        if table[IMAGE].tolist() != list(expected_images):
            log.warning(
                "stored predictions %s do not cover the split's images; predicting again", path
            )
            return None
        log.info("reusing stored predictions %s", path)
        return table

    def store_file(self, source: Path, name: str) -> Path | None:
        """A copy of ``source`` as ``<run>/predictions/<checkpoint stem>_<name>``."""
        target = self.folder / f"{self.checkpoint.stem}_{name}"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(target, source.read_bytes())
        except OSError as exc:
            log.warning("could not store %s beside the checkpoint (%s)", source.name, exc)
            return None
        log.info("%s stored as %s", source.name, target)
        return target

    def save(self, split: str, settings: dict, table: pd.DataFrame) -> Path | None:
        path, key = self._key(split, settings)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic_write(path) as partial:
                table.to_csv(partial, index=False)
            write_json_atomic(path.with_suffix(".json"), key, sort_keys=True, indent=1)
        except OSError as exc:
            log.warning(
                "could not store predictions beside the checkpoint (%s); they are only in the run folder",
                exc,
            )
            return None
        return path
