"""``chexnet_pl.evaluate``: score predictions against a dataset's labels with the engine of
``chexnet-evaluate preds=...`` (``evaluation.runner.score_and_write``): per-class AUROC with
patient-bootstrap CIs, operating points, calibration and subgroups, as tables and figures."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from chexnet_pl.data.nih_table import IMAGE
from chexnet_pl.errors import DataError
from chexnet_pl.files import write_csv_atomic

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """What an evaluation found, as ``chexnet-evaluate`` writes it.

    Attributes:
        aucs: the ``aucs.csv`` table, indexed by class: AUROC, CI, counts, operating point at
            the threshold chosen on validation (or on the split itself without ``val_predictions``),
            ECE and Brier score, and the paper's AUROC on NIH.
        calibration: the ``calibration.csv`` table (ECE, Brier score, ... per class).
        subgroups: the ``subgroups.csv`` table (per sex, age band, view), or None when the labels
            have no such columns.
        metrics: ``<split>/auroc`` and ``<split>/auroc_<class>``.
        files: every file the evaluation wrote (``aucs.csv``, ``roc_curves.png``, ...), by name.
        stratified: the shortcut audit's ``stratified.csv`` (per finding, covariate and stratum:
            AUROC with CI, DeLong p vs the other stratum; ``evaluation.stratify``), or None when
            no pair was audited.
    """

    aucs: pd.DataFrame
    calibration: pd.DataFrame | None
    subgroups: pd.DataFrame | None
    metrics: dict[str, float]
    files: dict[str, bytes] = field(repr=False)
    stratified: pd.DataFrame | None = None

    def write(self, folder: str | Path) -> Path:
        """Write every table and figure into ``folder`` (created if needed); returns it."""
        from chexnet_pl.files import write_bytes_atomic

        folder = Path(folder).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.files.items():
            write_bytes_atomic(folder / name, data)
        return folder


def evaluate(
    predictions: pd.DataFrame | str | Path,
    labels: Any,
    val_predictions: pd.DataFrame | str | Path | None = None,
    split: str = "test",
    **settings: Any,
) -> Evaluation:
    """Score predictions against labels, as ``chexnet-evaluate preds=... data.root=...`` does.

    Args:
        predictions: ``Model.predict``'s table, or a predictions CSV (``Image Index`` and
            ``prob_<finding>`` per finding). An ``image`` column of paths matches the labels
            by file name.
        labels: NIH's folder (its ``Data_Entry_2017*.csv`` and split lists) or its metadata CSV;
            or a dataset of ``chexnet_pl.datasets`` (``NIH``, ``CheXpert``, ``MIMICCXR``), whose
            labels (all splits) are used.
        val_predictions: validation predictions, on which each class's operating threshold
            (and a calibration) is chosen; without them, on ``predictions`` (optimistic).
        split: the split the report names (NIH: images outside its official list are said).
        **settings: ``evaluation.*`` settings (conf/evaluation/default.yaml), e.g.
            ``bootstrap_samples=200``, ``threshold="f1"``, ``calibrate="temperature"``,
            ``plots=False``.

    Returns:
        An ``Evaluation``.
    """
    from chexnet_pl.data.splits import SPLITS
    from chexnet_pl.evaluation.predictions import read_predictions
    from chexnet_pl.evaluation.provenance import image_sources, read_official_lists
    from chexnet_pl.evaluation.runner import score_and_write
    from chexnet_pl.evaluation.settings import EvaluationSettings

    if split not in SPLITS:
        raise DataError(f"split={split!r}; use one of {SPLITS}")
    evaluation_settings = EvaluationSettings.from_config(settings)  # unknown keys: one error
    truth, reference, lists_folder = _truth(labels)
    label_names = truth.attrs["labels"]
    with tempfile.TemporaryDirectory(prefix="chexnet_evaluate_") as temporary:
        work = Path(temporary)
        preds_file = _as_csv(predictions, work / "predictions.csv", truth.index)
        preds, names = read_predictions(preds_file, truth.index, label_names)
        val = None
        if val_predictions is not None:
            val_file = _as_csv(val_predictions, work / "val_predictions.csv", truth.index)
            val = read_predictions(val_file, truth.index, label_names)[0]
        lists = read_official_lists(lists_folder)
        sources = image_sources(preds[IMAGE].tolist(), lists, split, lists_folder)
        out = work / "out"
        label = preds_file.name if not isinstance(predictions, pd.DataFrame) else "predictions"
        table, metrics = score_and_write(
            preds, truth, names, out, evaluation_settings, split, val, reference, None,
            sources, label,
        )  # fmt: skip
        files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}
        aucs = pd.read_csv(out / "aucs.csv", index_col="class")
        calibration = _table(out / "calibration.csv", index_col=0)
        subgroups = _table(out / "subgroups.csv")
        stratified = _table(out / "stratified.csv")
    return Evaluation(aucs, calibration, subgroups, metrics, files, stratified)


def _table(path: Path, index_col: int | None = None) -> pd.DataFrame | None:
    return pd.read_csv(path, index_col=index_col) if path.is_file() else None


def _as_csv(predictions: pd.DataFrame | str | Path, path: Path, known: pd.Index) -> Path:
    """A predictions CSV for ``read_predictions`` (which checks it): a file as given, or the
    table written with ``Image Index`` (from an ``image`` column: the values as they are when
    the labels know them all, else their file names)."""
    if not isinstance(predictions, pd.DataFrame):
        return Path(predictions).expanduser()
    table = predictions.copy()
    if IMAGE not in table.columns:
        if "image" not in table.columns:
            raise DataError(
                f"the predictions have no '{IMAGE}' or 'image' column; their columns are "
                f"{list(table.columns)}"
            )
        images = [str(v) for v in table.pop("image")]
        if not pd.Index(images).isin(known).all():
            images = [os.path.basename(v) for v in images]
        table.insert(0, IMAGE, images)
    prob = [c for c in table.columns if str(c).startswith("prob_")]
    write_csv_atomic(table[[IMAGE, *prob]], path, index=False)
    return path


def _truth(labels: Any) -> tuple[pd.DataFrame, Any, Path | None]:
    """The labels frame (``labelled.truth_frame``), the data's reference AUROC and the folder
    of its official split lists."""
    from chexnet_pl.data.labelled_images import truth_frame

    datamodule = getattr(labels, "datamodule", None)
    if datamodule is not None:  # a chexnet_pl.datasets dataset
        truth = truth_frame(datamodule.table, datamodule.labels, datamodule.pathologies)
        return truth, datamodule.reference_auroc, getattr(datamodule, "root", None)
    if isinstance(labels, str | os.PathLike):
        from chexnet_pl.data.nih import NIHDataModule, label_index
        from chexnet_pl.data.nih_table import find_data_entry, read_data_entry

        path = Path(labels).expanduser()
        if not path.exists():
            raise DataError(f"labels not found: {path} (NIH's folder or its Data_Entry CSV)")
        csv = find_data_entry(path) if path.is_dir() else path
        folder = path if path.is_dir() else path.parent
        return label_index(read_data_entry(csv)), NIHDataModule.reference_auroc, folder
    if isinstance(labels, Mapping | pd.DataFrame):
        raise DataError(
            "labels: give NIH's folder (or its Data_Entry CSV), or a chexnet_pl.datasets dataset"
        )
    raise DataError(f"labels of type {type(labels).__name__}: give a folder, a CSV or a dataset")
