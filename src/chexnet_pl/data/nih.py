"""NIH ChestX-ray14 as released (or the synthetic demo in the same format): ``data=nih``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from chexnet_pl.data.datamodule import ChestXrayDataModule
from chexnet_pl.data.images import find_images
from chexnet_pl.data.labelled_images import (
    LabelledImages,
    collected_unmatched,
    filter_views,
    truth_frame,
)
from chexnet_pl.data.nih_table import (
    IMAGE,
    PAPER_AUROC,
    PAPER_MEAN,
    class_names,
    find_data_entry,
    label_matrix,
    read_data_entry,
)
from chexnet_pl.data.settings import FRONTAL, check_nih_settings
from chexnet_pl.data.splits import SplitSettings, make_split
from chexnet_pl.data.table_paths import check_files_in_folder
from chexnet_pl.errors import DataError

log = logging.getLogger(__name__)


class NIHDataModule(ChestXrayDataModule):
    """NIH ChestX-ray14: ``Data_Entry_2017*.csv``, NIH's split lists, ``images/*.png`` or
    ``images_NNN/images/*.png``.

    Args:
        root: the download folder (CSV, split lists, images).
        csv: the metadata CSV; found in ``root`` when not given.
        include_no_finding: 15 outputs (14 findings + No Finding) when true, else 14.
        split: ``method`` (official | patient | file), ``val_fraction``, ``fractions``, ``file``,
            ``seed``.
        view_position: all | frontal (= all: NIH's images are all frontal) | PA | AP.
        synthetic: keyword arguments of ``generate_synthetic_nih``; when set, ``prepare_data``
            writes that dataset into ``root`` if it is not there yet.
        The other arguments are ``ChestXrayDataModule``'s.
    """

    reference_auroc = (PAPER_AUROC, PAPER_MEAN)

    def __init__(
        self,
        root: str,
        csv: str | None,
        include_no_finding: bool,
        split: Mapping[str, Any],
        view_position: str,
        synthetic: Mapping[str, Any] | None,
        **settings: Any,
    ) -> None:
        super().__init__(root, **settings)  # judges every setting (check_settings) first
        split_args = dict(split)
        self.split_settings = SplitSettings(**split_args)
        self.csv = Path(csv).expanduser() if csv else None
        self.pathologies = class_names(include_no_finding)
        self.split_args = split_args
        self.view_position = view_position
        self.synthetic = dict(synthetic) if synthetic else None

    def check_settings(self, settings: Mapping[str, Any], problems) -> None:
        check_nih_settings(settings, problems)

    def prepare_data(self) -> None:
        if self.synthetic is not None:
            from chexnet_pl.data.synthetic import ensure_synthetic_nih

            ensure_synthetic_nih(self.root, **self.synthetic)
            if self.cache_mode != "off":  # the demo takes the fast path too
                from chexnet_pl.data.prepare import build_cache

                build_cache(self.root, self.image_size, self.cache_dir, workers=1, progress=False)

    def read_labels(self) -> LabelledImages:
        csv = self.csv or find_data_entry(self.root)
        table = read_data_entry(csv)
        labels = label_matrix(table["Finding Labels"], self.pathologies, source=csv)
        log.info("read %d rows from %s", len(table), csv)
        # Split first, on the whole table, so split lists are checked against the release as is.
        # Images a split list names that the CSV lacks stop the run, or are left out and listed.
        collected = [] if self.file_report.missing_images == "skip" else None
        table["split"] = make_split(table, self.split_settings, self.root, collected)
        table[FRONTAL] = True
        images = filter_views(LabelledImages(table, labels, str(csv)), self.view_position, "NIH")
        table, labels = images.table, images.labels
        used = table["split"].notna().to_numpy()
        table, labels = table[used].reset_index(drop=True), labels[used]
        on_disk = find_images(self.root)
        if not on_disk:
            raise DataError(
                f"no images under {self.root}: expected {self.root}/images/*.png or "
                f"{self.root}/images_NNN/images/*.png"
            )
        table["path"] = table[IMAGE].map(on_disk)
        check_files_in_folder(self.root, table["path"].tolist(), csv, table[IMAGE].tolist())
        return LabelledImages(table, labels, str(csv), collected_unmatched(collected, str(csv)))

    def cache_names(self, table: pd.DataFrame) -> pd.Series:
        return table[IMAGE]  # NIH's file names are unique: prepare names its images by them


def label_index(table: pd.DataFrame) -> pd.DataFrame:
    """NIH metadata rows → the frame evaluations score against (``labelled.truth_frame``): ``Patient ID``,
    all 15 label columns and the subgroup metadata, indexed by ``Image Index`` (for scoring a
    predictions file against NIH's labels, no images needed)."""
    names = class_names(True)
    return truth_frame(table, label_matrix(table["Finding Labels"], names), names)
