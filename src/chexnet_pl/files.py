"""File helpers used across the project: atomic writes and content digests.

Every file the project writes goes through ``atomic_write`` (or one of the ``write_*_atomic``
helpers built on it), so a run killed mid-write leaves the previous file or none, never half a
file (``tests/test_files.py`` scans ``src/`` for writes that do not). The exceptions write into a
folder that is itself renamed into place when complete, or append to a log; that test lists them.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chexnet_pl.errors import DiskFullError

CHUNK = 1 << 20
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# What torch.save's zip writer raises when the stream under it could not take every byte.
TORCH_WRITE_FAILED = ("inline_container", "PytorchStreamWriter failed", "unexpected pos")
NEARLY_FULL = 1 << 20  # bytes free: a write that failed with less than this left ran out of room


@contextmanager
def atomic_write(
    path: str | Path, suffix: str = ".partial", needed: int | None = None
) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.

    Readers see the old file or the complete new one, never a half-written one (``os.replace``
    is atomic within a file system). On an error the temporary file is removed; a full disk is
    raised as ``DiskFullError`` naming the folder and the space needed (``needed`` bytes when the
    caller knows them, else at least what was written before the disk filled).
    """
    path = Path(path)
    partial = path.with_name(path.name + suffix)
    try:
        yield partial
        os.replace(partial, path)
    except BaseException as exc:
        written = partial.stat().st_size if partial.is_file() else 0
        full = disk_full(exc, path.parent)  # judged before the partial file frees its space
        partial.unlink(missing_ok=True)
        if full:
            raise disk_full_error(path, written, needed) from exc
        raise


def disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether ``exc`` (or an exception it was raised from or during) says the disk of
    ``folder`` is full: ENOSPC/EDQUOT, or torch's zip writer failing with (almost) no space
    left."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(seen) < 8 and current not in seen:
        seen.append(current)
        if isinstance(current, DiskFullError):
            return False  # already said, by an inner write
        if isinstance(current, OSError) and current.errno in DISK_FULL:
            return True
        current = current.__cause__ or current.__context__
    if any(isinstance(e, RuntimeError) and any(t in str(e) for t in TORCH_WRITE_FAILED)
           for e in seen):  # fmt: skip
        return free_bytes(folder) < NEARLY_FULL
    return False


def free_bytes(folder: Path) -> int:
    """Bytes free on the disk holding ``folder`` (its nearest existing parent); -1 if unknown."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return -1


def size_text(count: int) -> str:
    """``count`` bytes for a message: ``12.3 MB``, ``512 bytes``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def disk_full_error(path: Path, written: int, needed: int | None) -> DiskFullError:
    """The one line a full disk gets: which folder, what was written, the space it needed."""
    if needed:
        need = f"it needs {size_text(needed)}"
    elif written:
        need = f"it needs more than the {size_text(written)} written before the disk filled"
    else:
        need = "not a byte of it could be written"
    free = free_bytes(path.parent)
    error = DiskFullError(
        f"no space left on the disk of {path.parent} while writing {path.name}: {need}"
        f"{f' ({size_text(free)} free now)' if free >= 0 else ''}; nothing of it was kept. "
        "Free space there, or write to another folder"
    )
    error.errno = errno.ENOSPC
    return error


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
