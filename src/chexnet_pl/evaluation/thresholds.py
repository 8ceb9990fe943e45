"""Which operating threshold each class is called at, one rule for every command.

``predict``, ``visualize``, ``serve`` and ``export`` mark a finding "above" its threshold with the
thresholds an evaluation chose on validation (``aucs.csv``, the ``threshold`` column):
``thresholds=<aucs.csv>`` when given; else the ``aucs.csv`` of the checkpoint's run (beside the
checkpoint, or in its run folder: ``<run>/checkpoints/best.ckpt`` → ``<run>/aucs.csv``, which
``train`` writes for its best checkpoint); else 0.5 for every class, with a one-line warning.
The output says which file was read. ``evaluate`` is where those thresholds are chosen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from chexnet_pl.errors import DataError
from chexnet_pl.labels import label_key

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
AUCS_FILE = "aucs.csv"


@dataclass(frozen=True)
class OperatingThresholds:
    """Per-class thresholds (model order) and the file they were read from (None: 0.5 each)."""

    values: tuple[float, ...]
    source: Path | None = None
    found: str = ""  # how the file was found: "given", "beside the checkpoint", "in its run folder"

    @property
    def description(self) -> str:
        """For the log and the tables: the file with its full path, or the fallback."""
        if self.source is None:
            return f"none found: {DEFAULT_THRESHOLD} for every class"
        return f"{self.source} ({self.found})"

    @property
    def public_description(self) -> str:
        """For the web page: which file, without the server's folders."""
        if self.source is None:
            return f"none found: {DEFAULT_THRESHOLD} for every class"
        return f"{self.source.name} ({self.found})"


def read_thresholds(aucs_csv: str | Path, class_names: list[str]) -> list[float]:
    """The ``threshold`` column of an evaluation's aucs.csv, in ``class_names`` order; class names
    match with a space or an underscore (``Pleural Thickening`` = ``Pleural_Thickening``). A class
    whose threshold is undefined there (no positives on validation) gets 0.5."""
    path = Path(aucs_csv).expanduser()
    if not path.is_file():
        raise DataError(
            f"thresholds file not found: {path} (thresholds=<an evaluation's aucs.csv>)"
        )
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(
            f"cannot read {path} as a CSV ({exc}); give the aucs.csv an evaluation wrote"
        ) from exc
    if "threshold" not in table or "class" not in table:
        raise DataError(
            f"{path} has no 'class' and 'threshold' columns; give the aucs.csv an evaluation wrote"
        )
    by_key = {
        label_key(str(name)): value
        for name, value in zip(table["class"], table["threshold"], strict=True)
    }
    missing = [name for name in class_names if label_key(name) not in by_key]
    if missing:
        raise DataError(
            f"{path} has no threshold for {missing}; give the aucs.csv of an evaluation of this model"
        )
    values = []
    for name in class_names:
        value = pd.to_numeric(by_key[label_key(name)], errors="coerce")
        if pd.notna(value) and not 0.0 <= float(value) <= 1.0:
            raise DataError(f"{path}: the threshold of {name} is {value}, outside [0, 1]")
        values.append(float(value) if pd.notna(value) else DEFAULT_THRESHOLD)
    return values


def _run_aucs(checkpoint: Path) -> tuple[Path, str] | None:
    for folder, found in ((checkpoint.parent, "beside the checkpoint"),
                          (checkpoint.parent.parent, "in the checkpoint's run folder")):  # fmt: skip
        if (folder / AUCS_FILE).is_file():
            return folder / AUCS_FILE, found
    return None


def operating_thresholds(
    checkpoint: str | Path, aucs_csv: str | Path | None, class_names: list[str]
) -> OperatingThresholds:
    """The thresholds the module docstring's rule gives; logs which file was read (or warns)."""
    checkpoint = Path(checkpoint).expanduser()
    if aucs_csv:
        source, found = Path(aucs_csv).expanduser(), "given as thresholds="
    elif (located := _run_aucs(checkpoint)) is not None:
        source, found = located
    else:
        log.warning(
            "no %s beside %s or in its run folder, and no thresholds= given: every class is "
            "called at %s (give thresholds=<an evaluation's aucs.csv> for the validation-chosen "
            "thresholds)", AUCS_FILE, checkpoint, DEFAULT_THRESHOLD,
        )  # fmt: skip
        return OperatingThresholds(tuple([DEFAULT_THRESHOLD] * len(class_names)))
    values = read_thresholds(source, class_names)
    thresholds = OperatingThresholds(tuple(values), source, found)
    log.info("operating thresholds from %s", thresholds.description)
    return thresholds
