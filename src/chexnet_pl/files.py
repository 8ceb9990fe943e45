"""File helpers used across the project: atomic writes and content digests.

Every file the project writes goes through ``atomic_write`` (or one of the ``write_*_atomic``
helpers built on it), so a run killed mid-write leaves the previous file or none, never half a
file (``tests/test_files.py`` scans ``src/`` for writes that do not). The exceptions write into a
folder that is itself renamed into place when complete, or append to a log; that test lists them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


@contextmanager
def atomic_write(path: str | Path, suffix: str = ".partial") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.

    Readers see the old file or the complete new one, never a half-written one (``os.replace``
    is atomic within a file system). On an error the temporary file is removed.
    """
    path = Path(path)
    partial = path.with_name(path.name + suffix)
    try:
        yield partial
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_write(path) as partial:
        partial.write_text(text)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_write(path) as partial:
        partial.write_bytes(data)


def write_json_atomic(path: str | Path, value: Any, **dumps: Any) -> None:
    """``json.dumps(value, **dumps)`` written atomically (e.g. ``indent=1``)."""
    write_text_atomic(path, json.dumps(value, **dumps))


def write_csv_atomic(table: Any, path: str | Path, **to_csv: Any) -> Path:
    """A pandas DataFrame (or Series) as CSV, written atomically; ``to_csv``: its keyword
    arguments (``index=False``). Returns ``path``."""
    path = Path(path)
    with atomic_write(path) as partial:
        table.to_csv(partial, **to_csv)
    return path


def unwritable_reason(folder: Path) -> str | None:
    """Why files cannot be created in ``folder`` (made if absent), or None when they can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_test_{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (``algorithm``: any hashlib name)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    return file_digest(path, "sha256")


def file_identity(path: str | Path) -> dict[str, int]:
    """What changes when a file is replaced or rewritten (size, modification time in ns, inode):
    equal to the one recorded beside a file's SHA-256, the file is the one hashed — without
    reading it again (an atomic replace or a copy makes a new inode)."""
    stat = Path(path).stat()
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}


FIGURE_FORMATS = ("png", "pdf", "svg")  # evaluation.figure_format: what a journal takes
FIGURE_DPI = 200  # PNG resolution (journals ask for at least 200-300 dpi for line art at size)


def figure_path(folder: str | Path, stem: str, figure_format: str = "png") -> Path:
    """``folder/stem.<figure_format>``: where a figure of that format is written."""
    return Path(folder) / f"{stem}.{figure_format}"


def save_figure(
    figure,
    path: str | Path,
    title: str | None = None,
    title_size=None,
    tight: bool = True,
    dpi: int = FIGURE_DPI,
) -> Path:
    """Title, lay out, write (the format from the name's suffix: PNG at ``dpi``, PDF or SVG as
    vectors; folders made) and close a figure: every plot file. ``tight=False`` for figures laid
    out by their own grid. The canvas is not cropped to what is drawn (``bbox_inches="tight"``
    draws a figure once more, the slowest step of an evaluation): ``tight_layout`` or the
    figure's own grid keeps every label inside it."""
    import matplotlib.pyplot as plt  # the figure was drawn with it: already imported

    path = Path(path)
    if title:
        figure.suptitle(title, fontsize=title_size)
    if tight:
        figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = path.suffix[1:].lower() or "png"
    with atomic_write(path) as partial:  # the format from the name, not from the temporary one's
        figure.savefig(partial, format=kind, dpi=dpi)
    plt.close(figure)
    return path
