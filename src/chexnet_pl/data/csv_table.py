"""Reading a dataset's released CSV table (plain, gzipped or zipped) before anything is taken from it:
readable, with the columns the release has, and at least one row — or one DataError naming the
file and what is wrong."""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from chexnet_pl.errors import DataError


def read_csv_table(
    path: str | Path,
    what: str,
    required: Sequence[str],
    release: str,
    dtype: Mapping[str, type] | None = None,
) -> pd.DataFrame:
    """``path`` (``what`` it is, for the message when it is not there) read with ``dtype``, column
    names stripped, checked for the ``required`` columns (``release``: the sentence saying what
    the released table has, for the message) and a row."""
    if not Path(path).is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        table = pd.read_csv(path, dtype=dtype)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError,
            EOFError, zipfile.BadZipFile) as exc:  # fmt: skip
        raise DataError(f"cannot parse {path} as a CSV (is it damaged?): {exc}") from exc
    # A table whose lines all end with a comma (NIH's 2017 release) gets an empty "Unnamed: N".
    empty_extra = [
        c for c in table.columns if str(c).startswith("Unnamed") and table[c].isna().all()
    ]
    table = table.drop(columns=empty_extra)
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(
            f"{path} lacks column(s) {missing}; it has {list(table.columns)}. {release}"
        )
    if table.empty:
        raise DataError(f"{path} has a header but no rows")
    return table
