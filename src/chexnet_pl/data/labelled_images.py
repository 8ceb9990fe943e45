"""What a dataset's ``read_labels`` gives the data module (``LabelledImages``): its table, with the
subgroup metadata under NIH's column names, and its labels; the view filter every dataset applies
to it (``data.view_position``); and the frame evaluations score against (``truth_frame``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from chexnet_pl.data.nih_table import IMAGE, PATIENT, VIEW
from chexnet_pl.data.settings import FRONTAL

log = logging.getLogger(__name__)

# The subgroup metadata a table may carry, under NIH's names (each dataset renames its own).
SEX = "Patient Gender"
AGE = "Patient Age"
DATASET = "Dataset"  # pooled datasets (data=nih+chexpert): which one an image comes from
MANUFACTURER = "Manufacturer"  # the X-ray unit's maker (PadChest)
PEDIATRIC = "Pediatric"  # pediatric | adult (PadChest)
METADATA_COLUMNS = (SEX, AGE, VIEW, "Follow-up #", DATASET, MANUFACTURER, PEDIATRIC)


@dataclass
class LabelledImages:
    """What a dataset's ``read_labels`` gives: a table with ``Image Index`` (a unique name),
    ``Patient ID``, ``split`` (train, val or test), ``path`` (the file; NaN when not on disk) and
    the subgroup metadata, row-aligned with float32 ``labels`` (columns: the data module's
    ``pathologies``; NaN: not labelled), and what was read (for messages). ``unmatched``: images
    one table names that another lacks (``UNMATCHED_COLUMNS``; e.g. a split row without a
    metadata row), settled with the missing images (``data.missing_images``)."""

    table: pd.DataFrame
    labels: np.ndarray
    source: str
    unmatched: pd.DataFrame | None = None


# An image one of a dataset's tables names and another lacks: which, its split, where it is
# listed and which table has no row for it.
UNMATCHED_COLUMNS = [IMAGE, "split", "listed_in", "missing_from"]


def unmatched_rows(
    images: Sequence[str], splits: Sequence[object], listed_in: str, missing_from: str
) -> pd.DataFrame:
    """``LabelledImages.unmatched`` rows: ``images`` (with their ``splits``) that the table
    ``listed_in`` names and the table ``missing_from`` has no row for."""
    return pd.DataFrame(
        {IMAGE: list(images), "split": list(splits), "listed_in": listed_in,
         "missing_from": missing_from},
        columns=UNMATCHED_COLUMNS,
    )  # fmt: skip


def filter_views(
    images: LabelledImages, view_position: str, dataset: str = "data"
) -> LabelledImages:
    """Keep the images of ``data.view_position`` (``VIEWS``); the table has ``View Position`` and
    ``Frontal`` (True where absent: a dataset of frontal views only)."""
    table = images.table
    frontal = table[FRONTAL].to_numpy(bool) if FRONTAL in table else np.ones(len(table), bool)
    if view_position == "all":
        return images
    if view_position == "frontal":
        keep = frontal
    elif view_position == "lateral":
        keep = ~frontal
    else:
        keep = (
            frontal & (table[VIEW].astype(str).str.strip().str.upper() == view_position).to_numpy()
        )
    log.info("%s: view_position=%s keeps %d of %d images", dataset, view_position, keep.sum(),
             len(table))  # fmt: skip
    return LabelledImages(table[keep].reset_index(drop=True), images.labels[keep], images.source)


def truth_frame(table: pd.DataFrame, labels: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """A dataset's rows → ``Image Index``-indexed frame of ``Patient ID``, the label columns
    (``names``; NaN: not labelled) and the subgroup metadata the table has (sex, age, view,
    follow-up); ``attrs["labels"]`` names the label columns."""
    frame = pd.DataFrame(labels, columns=list(names), index=pd.Index(table[IMAGE], name=IMAGE))
    frame.attrs["labels"] = list(names)
    frame.insert(0, PATIENT, table[PATIENT].to_numpy())
    for column in METADATA_COLUMNS:
        if column in table.columns:
            frame[column] = table[column].to_numpy()
    return frame


def collected_unmatched(
    frames: list[pd.DataFrame] | None, missing_from: str | None = None
) -> pd.DataFrame | None:
    """The unmatched rows a split collected (``splits._check_listed``; None or empty: none),
    as one frame, with ``missing_from`` (the table lacking them) set when given."""
    if not frames:
        return None
    rows = pd.concat(frames, ignore_index=True)[UNMATCHED_COLUMNS]
    if missing_from is not None:
        rows["missing_from"] = missing_from
    return rows
