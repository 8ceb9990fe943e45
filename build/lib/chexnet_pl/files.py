"""File helpers used across the project: atomic writes and content digests."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (``algorithm``: any hashlib name)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    return file_digest(path, "sha256")
