"""Image paths a dataset's table names stay inside the folder they are relative to.

A table from elsewhere (CheXpert's ``Path``, MIMIC-CXR-JPG's ``dicom_id``) decides which files a
run opens: a path that is absolute, climbs out with ``..``, or reaches a file through a link
pointing outside the data folder is refused, naming the table, its line and the value, before
any image is read. Resolving is per folder (one ``realpath`` per folder, plus files that are
links themselves), so a table of 200,000 images costs one pass over its folders.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from chexnet_pl.errors import DataError


def _inside(path: str, real_folder: str) -> bool:
    return path == real_folder or path.startswith(real_folder.rstrip(os.sep) + os.sep)


class _Resolver:
    """``realpath`` of files under one folder: each folder below it resolved once, from its
    parent's (one ``lstat`` per folder and per file)."""

    def __init__(self, folder: Path) -> None:
        self.real_folder = os.path.realpath(folder)
        self.folders: dict[str, str] = {str(folder): self.real_folder}

    def _real_folder(self, folder: str) -> str:
        real = self.folders.get(folder)
        if real is None:
            parent, name = os.path.split(folder)
            if not parent or parent == folder or not name:
                real = os.path.realpath(folder)
            else:
                real = os.path.join(self._real_folder(parent), name)
                if os.path.islink(real):
                    real = os.path.realpath(real)
            self.folders[folder] = real
        return real

    def real(self, path: str) -> str:
        parent, name = os.path.split(path)
        real = os.path.join(self._real_folder(parent), name)
        return os.path.realpath(real) if os.path.islink(real) else real

    def outside(self, path: str) -> str | None:
        """Where ``path`` really is when that is outside the folder, else None."""
        real = self.real(path)
        return None if _inside(real, self.real_folder) else real


def leaves_folder(relative: str) -> bool:
    """Whether a path a table gives relative to a folder leads outside it (absolute, a drive,
    ``..`` past its top, a NUL)."""
    if not relative or "\0" in relative or os.path.isabs(relative):
        return True
    if os.path.splitdrive(relative)[0]:
        return True
    if os.pardir not in relative:  # the usual case, without normalising
        return False
    normal = os.path.normpath(relative)
    return normal == os.pardir or normal.startswith(os.pardir + os.sep)


def files_in_folder(
    folder: Path,
    relative: Sequence[str],
    source: str | Path,
    column: str,
    lines: Sequence[int],
    values: Sequence[str] | None = None,
) -> list[str | None]:
    """Per ``relative`` path (made from ``column`` of ``source`` at ``lines``; ``values``: what
    the table says there, when the path is built from it): its file under ``folder``, or None
    when it is not on disk. A path leading outside ``folder`` — written so, or through a link —
    stops with a DataError naming the table, line and value."""
    resolver = _Resolver(folder)
    files: list[str | None] = []
    for i, (name, line) in enumerate(zip(relative, lines, strict=True)):
        value = name if values is None else values[i]
        if leaves_folder(name):
            raise DataError(
                f"{source}, line {line}: {column} {value!r} leads outside {folder}, the folder its "
                "images are read from; a table may only name images inside it (is the table "
                "from elsewhere, or edited?)"
            )
        path = os.path.join(folder, os.path.normpath(name))
        if not os.path.isfile(path):
            files.append(None)
            continue
        real = resolver.outside(path)
        if real is not None:
            raise _link_error(source, f"line {line}: {column} {value!r}", path, real, folder)
        files.append(path)
    return files


def check_files_in_folder(
    folder: Path, paths: Sequence[str | None], source: str | Path, names: Sequence[str]
) -> None:
    """Refuse any of ``paths`` (the files of images ``names`` of ``source``; None: not on disk)
    that is really outside ``folder`` through a link."""
    resolver = _Resolver(folder)
    for path, name in zip(paths, names, strict=True):
        if path is None or path != path:  # None or NaN: not on disk
            continue
        real = resolver.outside(str(path))
        if real is not None:
            raise _link_error(source, f"image {name!r}", str(path), real, folder)


def _link_error(source: str | Path, where: str, path: str, real: str, folder: Path) -> DataError:
    return DataError(
        f"{source}, {where}: its file {path} is a link to {real}, outside the data folder "
        f"{folder}; images are read only from inside it. Copy the file there, or point data.root "
        "at a folder that holds it"
    )
