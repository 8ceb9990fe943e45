"""What a dataset's ``read_labels`` gives the data module (``LabelledImages``), and the view filter
every dataset applies to it (``data.view_position``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from chexnet_pl.data.nih_table import VIEW
from chexnet_pl.data.settings import FRONTAL

log = logging.getLogger(__name__)


@dataclass
class LabelledImages:
    """What a dataset's ``read_labels`` gives: a table with ``Image Index`` (a unique name),
    ``Patient ID``, ``split`` (train, val or test), ``path`` (the file; NaN when not on disk) and
    the subgroup metadata, row-aligned with float32 ``labels`` (columns: the data module's
    ``pathologies``; NaN: not labelled), and what was read (for messages)."""

    table: pd.DataFrame
    labels: np.ndarray
    source: str


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
