"""A pre-resized image cache: every image decoded once into one uint8 memory-mapped array.

Layout of ``<cache_dir>/<size>px/``:

- ``images.u8``: ``count x size x size`` uint8 (grayscale, area interpolation), row per image;
- ``index.csv``: ``Image Index, source, bytes, mtime_ns, status, error`` — ``source`` relative to
  the data root, ``bytes``/``mtime_ns`` of the source file when it was decoded, ``status`` ok or bad;
- ``manifest.json``: format version, size, interpolation, count, ``complete``.

A cache is built in ``<size>px.partial/`` (resumable: a status byte per row) and renamed into
place only when complete, so a reader never sees a half-written one. ``open_cache`` refuses a
cache whose version, size or completeness is wrong, or whose sources changed since it was built.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from chexnet_pl.errors import DataError

log = logging.getLogger(__name__)

CACHE_FORMAT = "chexnet_pl-image-cache"
CACHE_VERSION = 1
INTERPOLATION = "area"
IMAGES, INDEX, MANIFEST = "images.u8", "index.csv", "manifest.json"
STATUS_TODO, STATUS_OK, STATUS_BAD = 0, 1, 2


def cache_folder(cache_dir: str | Path, size: int) -> Path:
    return Path(cache_dir).expanduser() / f"{int(size)}px"


def source_listing(images: dict[str, Path], root: Path) -> pd.DataFrame:
    """One row per image file: name, path relative to ``root``, size and mtime now."""
    rows = []
    for name in sorted(images):
        path = images[name]
        stat = path.stat()
        rows.append((name, os.path.relpath(path, root), stat.st_size, stat.st_mtime_ns))
    return pd.DataFrame(rows, columns=["Image Index", "source", "bytes", "mtime_ns"])


@dataclass
class ImageCache:
    """A complete cache, opened lazily in each process (DataLoader workers map it themselves)."""

    folder: Path
    size: int
    count: int
    index: pd.DataFrame  # row-aligned with images.u8
    identity: tuple[int, int, int] = (0, 0, 0)  # inode, size, mtime of images.u8 when opened
    _array: np.memmap | None = field(default=None, repr=False)

    @property
    def array(self) -> np.memmap:
        if self._array is None:
            if _identity(self.folder / IMAGES) != self.identity:
                raise DataError(
                    f"the cache {self.folder} was rebuilt or changed while this run was using it "
                    "(its rows no longer match); start the run again"
                )
            self._array = np.memmap(
                self.folder / IMAGES,
                dtype=np.uint8,
                mode="r",
                shape=(self.count, self.size, self.size),
            )
        return self._array

    def read(self, row: int) -> np.ndarray:
        """A writable ``size x size`` uint8 copy of one image."""
        return np.array(self.array[row])

    def rows_of(self, names: Iterable[str]) -> np.ndarray:
        """Row of each name (NaN where a name is not cached)."""
        lookup = pd.Series(np.arange(len(self.index)), index=self.index["Image Index"])
        return lookup.reindex(list(names)).to_numpy()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_array"] = None  # each worker maps the file itself instead of copying it
        return state


class StaleCache(Exception):
    """Why a cache cannot be used (said in one line)."""


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise StaleCache(f"no {MANIFEST} in {folder}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise StaleCache(f"{path} is not valid JSON ({exc})") from exc


def _identity(path: Path) -> tuple[int, int, int]:
    try:
        stat = path.stat()
    except OSError:
        return (0, 0, 0)
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


INDEX_COLUMNS = ["Image Index", "source", "bytes", "mtime_ns", "status", "error"]


def open_cache(folder: Path, size: int) -> ImageCache:
    """Open a complete cache of ``size`` px; raises StaleCache saying why it cannot be used."""
    try:
        return _open_cache(folder, size)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # damaged or half-copied files
        raise StaleCache(f"{folder} is damaged ({type(exc).__name__}: {exc})") from exc


def _open_cache(folder: Path, size: int) -> ImageCache:
    manifest = read_manifest(folder)
    if manifest.get("format") != CACHE_FORMAT or manifest.get("version") != CACHE_VERSION:
        raise StaleCache(
            f"{folder} was written by another version (format {manifest.get('format')!r} "
            f"v{manifest.get('version')}, this code reads v{CACHE_VERSION})"
        )
    if not manifest.get("complete"):
        raise StaleCache(f"{folder} is incomplete")
    if manifest.get("size") != size or manifest.get("interpolation") != INTERPOLATION:
        raise StaleCache(f"{folder} holds {manifest.get('size')} px images, not {size} px")
    index = pd.read_csv(folder / INDEX, dtype={"error": str}, keep_default_na=False)
    missing = [column for column in INDEX_COLUMNS if column not in index.columns]
    if missing:
        raise StaleCache(f"{folder / INDEX} lacks the column(s) {missing}")
    expected = manifest["count"] * size * size
    actual = (folder / IMAGES).stat().st_size if (folder / IMAGES).exists() else -1
    if len(index) != manifest["count"] or actual != expected:
        raise StaleCache(
            f"{folder} is damaged: {len(index)} index rows and {actual} bytes of images for "
            f"{manifest['count']} images of {size} px"
        )
    return ImageCache(folder, size, int(manifest["count"]), index, _identity(folder / IMAGES))


def check_sources(cache: ImageCache, names: pd.Series, paths: pd.Series) -> np.ndarray:
    """The cache rows of ``names``; raises StaleCache unless every one is cached and its source
    file (``paths``) is unchanged since."""
    rows = cache.rows_of(names).astype(float)
    absent = np.isnan(rows)
    if absent.any():
        examples = names[absent].head(3).tolist()
        raise StaleCache(
            f"{int(absent.sum())} image(s) in use are not in the cache, e.g. {examples}"
        )
    entries = cache.index.iloc[rows.astype(np.int64)]
    changed = []
    for path, size, mtime in zip(paths, entries["bytes"], entries["mtime_ns"], strict=True):
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            changed.append(f"{path} (gone)")
            continue
        if stat.st_size != size or stat.st_mtime_ns != mtime:
            changed.append(str(path))
        if len(changed) >= 3:
            break
    if changed:
        raise StaleCache(f"source images changed since the cache was built, e.g. {changed}")
    return rows.astype(np.int64)


def find_cache(
    mode: str,
    cache_dir: Path | None,
    cache_size: int | None,
    image_size: int,
    names: pd.Series,
    paths: pd.Series,
    root: Path | None,
) -> tuple[ImageCache, np.ndarray] | None:
    """The cache (``data.cache``: auto, off, required) and its rows for the images ``names``
    (files ``paths``): of size ``cache_size``, or the smallest prepared size ≥ ``image_size``
    that is valid for them; None when there is none (``required``: a DataError saying how to
    build one)."""
    if mode == "off" or cache_dir is None:
        return None
    if cache_size:
        sizes = [cache_size]
    else:
        prepared = cache_dir.glob("*px") if cache_dir.is_dir() else []
        sizes = sorted(
            int(p.name[:-2])
            for p in prepared
            if p.name[:-2].isdigit() and int(p.name[:-2]) >= image_size
        )
    problems = []
    for size in sizes:
        folder = cache_folder(cache_dir, size)
        try:
            cache = open_cache(folder, size)
            rows = check_sources(cache, names, paths)
        except StaleCache as exc:
            problems.append(str(exc))
            continue
        log.info("reading %d images from the %d px cache in %s", len(names), size, folder)
        return cache, rows
    build = f"chexnet-prepare root={root} size={cache_size or image_size}"
    if root is None or cache_dir != root / "prepared":
        build += f" cache_dir={cache_dir}"
    found = "; ".join(problems) or f"no prepared cache of ≥ {image_size} px in {cache_dir}"
    if mode == "required":
        raise DataError(f"data.cache=required, but {found}. Build it with: {build}")
    if problems:
        log.warning(
            "not using the image cache: %s. Decoding image files instead; rebuild it with: %s",
            found,
            build,
        )
    else:
        log.info("decoding image files (%s); for faster loading run once: %s", found, build)
    return None
