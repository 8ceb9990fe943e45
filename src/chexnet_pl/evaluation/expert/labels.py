"""Radiologist-adjudicated labels of NIH images (Google's table, Majkowska et al., Radiology 2020):
reading and checking the table, and the map from a model's outputs to its findings.

Google's CSV has NIH's own 11 columns, then one YES/NO column per finding (Fracture, Pneumothorax,
Airspace opacity, Nodule or mass) and ``Set Id``: ``test`` (images of NIH's official test list) or
``val`` (images of its train_val list).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chexnet_pl.data.nih_table import IMAGE
from chexnet_pl.errors import ConfigError, DataError, shown

SET_ID = "Set Id"
EXPERT_SETS = ("test", "val")
YES_NO = {"YES": 1.0, "NO": 0.0}
NOT_AN_OUTPUT = "not an output"


@dataclass(frozen=True)
class ExpertMap:
    """``expert_map`` (conf/evaluate.yaml): per expert finding, the model outputs whose highest
    probability scores it, in the order the report lists them; ``()`` where the model has none."""

    findings: tuple[tuple[str, tuple[str, ...]], ...]

    def __post_init__(self) -> None:
        if not self.findings:
            raise ConfigError("expert_map is empty; map at least one expert finding to outputs")
        for finding, outputs in self.findings:
            if not isinstance(finding, str) or not finding.strip():
                raise ConfigError(
                    f"expert_map has a finding named {shown(finding)}; use its column name"
                )
            if len(set(outputs)) != len(outputs):
                raise ConfigError(f"expert_map.{finding} lists an output twice: {list(outputs)}")

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> ExpertMap:
        """From ``{finding: [output, ...]}``; a value that is not a list of names is refused."""
        if not isinstance(section, Mapping):
            raise ConfigError(
                f"expert_map={shown(section)} is not a mapping; give finding: [outputs], "
                "e.g. {Nodule or mass: [Nodule, Mass]}"
            )
        findings = []
        for finding, outputs in section.items():
            outputs = [] if outputs is None else outputs
            if (
                isinstance(outputs, str)
                or not isinstance(outputs, Sequence)
                or not all(isinstance(o, str) and o.strip() for o in outputs)
            ):
                raise ConfigError(
                    f"expert_map.{finding}={shown(outputs)} is not a list of output names; "
                    "give e.g. [Nodule, Mass], or [] when the model has no such output"
                )
            findings.append((str(finding), tuple(outputs)))
        return cls(tuple(findings))

    @property
    def names(self) -> list[str]:
        return [finding for finding, _ in self.findings]

    def outputs(self, finding: str) -> tuple[str, ...]:
        return dict(self.findings)[finding]

    def describe(self, finding: str) -> str:
        """How a finding is scored: ``Pneumothorax``, ``max(Nodule, Mass)`` or ``not an output``."""
        outputs = self.outputs(finding)
        if not outputs:
            return NOT_AN_OUTPUT
        return outputs[0] if len(outputs) == 1 else f"max({', '.join(outputs)})"

    def check_outputs(self, class_names: Sequence[str], source: str) -> None:
        """Every mapped output is one the model (or predictions file) ``source`` has."""
        for finding, outputs in self.findings:
            unknown = [o for o in outputs if o not in class_names]
            if unknown:
                raise ConfigError(
                    f"expert_map.{finding} names {unknown}, not outputs of {source} (it has "
                    f"{list(class_names)}); map {finding} to some of these, or to [] when none fits"
                )


def read_expert_labels(path: str | Path, findings: Sequence[str]) -> pd.DataFrame:
    """Google's table as an ``Image Index``-indexed frame of ``Set Id`` and one 0/1 column per
    finding in ``findings``. A damaged file, a missing column, a value other than YES/NO, an
    unknown set or a repeated image raises DataError naming the file, line, column and value."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"expert labels file not found: {path} (expert_labels=)")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot parse {path} as a CSV: {exc}") from exc
    except (EOFError, OSError, zlib.error) as exc:  # a truncated or damaged .gz
        raise DataError(f"cannot read {path} (damaged or truncated?): {exc}") from exc
    if not isinstance(table.index, pd.RangeIndex):  # pandas made the extra leading fields an index
        raise DataError(
            f"{path}: the rows have more fields than the header ({len(table.columns)} names); "
            "the header or the rows are damaged"
        )
    table.columns = [str(c).strip() for c in table.columns]
    required = [IMAGE, *findings, SET_ID]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(
            f"{path} lacks column(s) {missing}; its columns are {list(table.columns)}. Google's "
            f"table has '{IMAGE}', one YES/NO column per finding and '{SET_ID}' (test or val); "
            "expert_map names the findings"
        )
    if table.empty:
        raise DataError(f"{path} has a header but no rows")
    for column in required:
        table[column] = table[column].str.strip()
    _check_values(table, IMAGE, path, lambda v: v != "", "an image name")
    _check_values(table, SET_ID, path, lambda v: v in EXPERT_SETS, f"one of {list(EXPERT_SETS)}")
    for finding in findings:
        _check_values(table, finding, path, lambda v: v.upper() in YES_NO, "YES or NO")
    repeated = table[IMAGE].duplicated()
    if repeated.any():
        i = int(np.flatnonzero(repeated.to_numpy())[0])
        raise DataError(
            f"{path}, line {i + 2}: image {table[IMAGE].iloc[i]!r} has more than one row "
            f"({int(repeated.sum())} repeated row(s))"
        )
    labels = pd.DataFrame(
        {finding: table[finding].str.upper().map(YES_NO).to_numpy() for finding in findings},
        index=pd.Index(table[IMAGE], name=IMAGE),
    )
    labels.insert(0, SET_ID, table[SET_ID].to_numpy())
    return labels


def _check_values(table: pd.DataFrame, column: str, path: Path, valid, expected: str) -> None:
    bad = ~table[column].map(valid).to_numpy(dtype=bool)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        value = table[column].iloc[i]
        raise DataError(
            f"{path}, line {i + 2}, column '{column}': {'blank' if value == '' else shown(value)} "
            f"is not {expected} ({int(bad.sum())} such value(s) in that column)"
        )
