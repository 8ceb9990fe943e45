"""Which operating threshold each class is called at, one rule for every command.

``predict``, ``visualize``, ``serve`` and ``export`` mark a finding "above" its threshold with the
thresholds an evaluation chose on validation (``aucs.csv``, the ``threshold`` column):
``thresholds=<aucs.csv>`` when given; else, for a safetensors export, those its sidecar
records; else the ``aucs.csv`` of the checkpoint's run (beside the
checkpoint, or in its run folder: ``<run>/checkpoints/best.ckpt`` → ``<run>/aucs.csv``, which
``train`` writes for its best checkpoint); else 0.5 for every class, with a one-line warning.
The output says which file was read. ``evaluate`` is where those thresholds are chosen: Youden's J
on the validation split by default (``evaluation.threshold``), written in aucs.csv's
``threshold_rule``, ``threshold_split``, ``threshold_positives`` and ``threshold_status``.

A class whose threshold is undefined (no positives or no negatives on validation) gets no verdict
(NaN here: "undefined" with the reason, never 0.5); a degenerate one (sensitivity or specificity 0
on validation, such as 1.000 that no image reaches) is used but flagged wherever it is shown.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from chexnet_pl.errors import DataError
from chexnet_pl.label_sets import label_key

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
AUCS_FILE = "aucs.csv"


RULES = {"youden": "Youden's J", "f1": "F1-maximising"}
SPLITS = {"val": "validation"}


@dataclass(frozen=True)
class OperatingThresholds:
    """Per-class thresholds (model order; NaN: undefined, no verdict), the file they were read
    from (None: 0.5 each), a note per class ("": usable; else why it is undefined or
    degenerate) and how they were chosen."""

    values: tuple[float, ...]
    source: Path | None = None
    found: str = ""  # how the file was found: "given", "beside the checkpoint", "in its run folder"
    notes: tuple[str, ...] = ()
    rule: str = ""  # e.g. "Youden's J on the validation split"
    positives: tuple[int | None, ...] = ()  # per class, of the split they were chosen on

    def note(self, j: int) -> str:
        """Class ``j``'s note ("": a usable threshold)."""
        return self.notes[j] if j < len(self.notes) else ""

    @property
    def how(self) -> dict:
        """How they were chosen, for the tables, the page and the API."""
        return {
            "rule": self.rule or ("none: no aucs.csv" if self.source is None else "not recorded"),
            "positives": list(self.positives) or None,
        }

    @property
    def description(self) -> str:
        """For the log and the tables: the file with its full path, or the fallback."""
        if self.source is None:
            return f"none found: {DEFAULT_THRESHOLD} for every class"
        return f"{self.source} ({self.found}){self._rule_text}"

    @property
    def _rule_text(self) -> str:
        return f", {self.rule}" if self.rule else ""

    @property
    def public_description(self) -> str:
        """For the web page: which file, without the server's folders."""
        if self.source is None:
            return f"none found: {DEFAULT_THRESHOLD} for every class"
        return f"{self.source.name} ({self.found}){self._rule_text}"


def read_thresholds(aucs_csv: str | Path, class_names: list[str]) -> list[float]:
    """The ``threshold`` column of an evaluation's aucs.csv, in ``class_names`` order; class names
    match with a space or an underscore (``Pleural Thickening`` = ``Pleural_Thickening``). A class
    whose threshold is undefined there (no positives on validation) gets NaN: no verdict."""
    return list(read_threshold_table(aucs_csv, class_names).values)


def read_threshold_table(aucs_csv: str | Path, class_names: list[str]) -> OperatingThresholds:
    """``read_thresholds`` with each class's note (undefined or degenerate, and why) and how the
    thresholds were chosen, from the columns the evaluation wrote beside them (an older aucs.csv
    without them: undefined where blank, degenerate where 1.0 or above every score)."""
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
    rows = {
        label_key(str(name)): row
        for name, row in zip(table["class"], table.to_dict("records"), strict=True)
    }
    values, notes, positives = [], [], []
    for name in class_names:
        row = rows[label_key(name)]
        value = pd.to_numeric(by_key[label_key(name)], errors="coerce")
        if pd.notna(value) and not 0.0 <= float(value) <= 1.0:
            raise DataError(f"{path}: the threshold of {name} is {value}, outside [0, 1]")
        values.append(float(value) if pd.notna(value) else float("nan"))
        status = row.get("threshold_status")
        if isinstance(status, str) and status and status != "ok":
            notes.append(status)
        elif pd.isna(value):
            notes.append("undefined: no positives or no negatives where it was chosen")
        elif float(value) >= 1.0:
            notes.append(f"degenerate: {float(value):.3f}, which no probability passes")
        else:
            notes.append("")
        count = pd.to_numeric(row.get("threshold_positives"), errors="coerce")
        positives.append(int(count) if pd.notna(count) else None)
    rule = _rule(table)
    return OperatingThresholds(
        tuple(values), path, notes=tuple(notes), rule=rule,
        positives=tuple(positives) if any(p is not None for p in positives) else (),
    )  # fmt: skip


def _rule(table: pd.DataFrame) -> str:
    """ "Youden's J on the validation split", from the columns an evaluation wrote ("" if none)."""
    if "threshold_rule" not in table:
        return ""
    rules = table["threshold_rule"].dropna().unique()
    splits = table["threshold_split"].dropna().unique() if "threshold_split" in table else []
    if len(rules) != 1:
        return ""
    rule = RULES.get(str(rules[0]), str(rules[0]))
    split = SPLITS.get(str(splits[0]), str(splits[0])) if len(splits) == 1 else "?"
    return f"{rule} on the {split} split"


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
    if not aucs_csv and checkpoint.suffix.lower() == ".safetensors":  # its sidecar's thresholds
        return recorded_thresholds(checkpoint, class_names)
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
    read = read_threshold_table(source, class_names)
    thresholds = OperatingThresholds(
        read.values, source, found, read.notes, read.rule, read.positives
    )
    log.info("operating thresholds from %s", thresholds.description)
    flagged = [
        f"{n}: {note}" for n, note in zip(class_names, thresholds.notes, strict=True) if note
    ]
    if flagged:
        log.warning("thresholds without a usable verdict:\n  %s", "\n  ".join(flagged))
    return thresholds


AGAIN = "export the checkpoint again with: chexnet-export ckpt=<its checkpoint> format=safetensors"


def recorded_thresholds(path: Path, class_names: list[str]) -> OperatingThresholds:
    """The operating thresholds a safetensors export's sidecar records (with their notes and
    rule), as ``evaluation.thresholds.OperatingThresholds``."""
    import json

    from chexnet_pl.errors import WeightsError

    sidecar = path.with_name(path.name + ".json")  # checked against the weights as they loaded
    try:
        card = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{sidecar} cannot be read ({exc}); {AGAIN}") from exc
    recorded = card.get("thresholds") or {}
    if not isinstance(recorded, dict) or set(recorded) != set(class_names):
        raise WeightsError(f"{path}'s sidecar has no threshold for every class; {AGAIN}")
    values = []
    for name in class_names:
        value = recorded[name]
        if value is not None and (not isinstance(value, int | float) or not 0 <= value <= 1):
            raise WeightsError(f"{path}'s sidecar: the threshold of {name} is {value!r}; {AGAIN}")
        values.append(float("nan") if value is None else float(value))
    notes = card.get("threshold_notes") or {}
    chosen = card.get("thresholds_chosen") or {}
    positives = chosen.get("positives") if isinstance(chosen, dict) else None
    source = str(card.get("thresholds_source") or "")
    return OperatingThresholds(
        tuple(values),
        None if not source or source.startswith("none found") else Path(path),
        "recorded in the export's sidecar",
        tuple(str(notes.get(n) or "") for n in class_names) if isinstance(notes, dict) else (),
        str(chosen.get("rule") or "") if isinstance(chosen, dict) else "",
        tuple(positives) if isinstance(positives, list) else (),
    )
