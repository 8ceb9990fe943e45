"""Decode every image once into the pre-resized cache the data module reads (``data.cache``).

The command is ``chexnet-prepare`` (``python -m chexnet_pl.prepare``).

Parallel across cores, resumable (rerun after an interruption continues where it stopped),
atomic (the cache appears only when complete), and a no-op when the cache is up to date with the
source files; a stale cache (files added, changed or removed) is rebuilt.
"""

from __future__ import annotations

import ctypes
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from chexnet_pl.data.cache import (
    CACHE_FORMAT,
    CACHE_VERSION,
    IMAGES,
    INDEX,
    INTERPOLATION,
    MANIFEST,
    STATUS_BAD,
    STATUS_OK,
    STATUS_TODO,
    StaleCache,
    cache_folder,
    open_cache,
    source_listing,
)
from chexnet_pl.data.image_limits import check_max_pixels
from chexnet_pl.data.images import list_images, read_gray
from chexnet_pl.data.transforms import area_resize
from chexnet_pl.errors import DataError, DiskFullError, ImageReadError
from chexnet_pl.files import (
    DISK_FULL,
    free_bytes,
    size_text,
    write_csv_atomic,
    write_json_atomic,
)

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent builds there are not guarded
    fcntl = None

log = logging.getLogger(__name__)

STATUS, ERRORS = "status.u8", "errors.jsonl"
SOURCE_COLUMNS = ["Image Index", "source", "bytes", "mtime_ns"]


def default_cache_dir(root: str | Path) -> Path:
    return Path(root).expanduser() / "prepared"


def reserve_space(handle, size: int) -> None:
    """Allocate ``size`` bytes on disk for ``handle`` (a full disk raises OSError now, not SIGBUS
    later). macOS and Windows have no posix_fallocate: there the file is only extended, after
    checking that the disk has room."""
    if hasattr(os, "posix_fallocate"):
        os.posix_fallocate(handle.fileno(), 0, size)
        return
    free = shutil.disk_usage(Path(handle.name).parent).free
    if free < size:
        raise OSError(28, f"No space left on device ({free} bytes free, {size} needed)")
    handle.truncate(size)


# -- worker side ------------------------------------------------------------------------------
_worker: dict = {}
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _exit_with_parent(parent_pid: int) -> None:
    """A SIGKILLed parent cannot stop its pool; its workers would idle on, orphaned. Ask the
    kernel to send SIGTERM when the parent dies (Linux), and watch the parent's pid as well
    (other systems, or a parent that died before the request took effect)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):  # no libc prctl: the watchdog alone
            pass
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _open_worker(
    folder: str, count: int, size: int, parent_pid: int | None = None, max_pixels: int | None = None
) -> None:
    if parent_pid is not None:
        _exit_with_parent(parent_pid)
    cv2.setNumThreads(1)  # one image per process at a time; parallelism is across processes
    _worker["images"] = np.memmap(
        Path(folder) / IMAGES, dtype=np.uint8, mode="r+", shape=(count, size, size)
    )
    _worker["status"] = np.memmap(Path(folder) / STATUS, dtype=np.uint8, mode="r+", shape=(count,))
    _worker["size"] = size
    _worker["max_pixels"] = max_pixels


def _decode_chunk(job: tuple[np.ndarray, list[str]]) -> tuple[int, list[tuple[int, str, str]]]:
    """Decode, resize and store one chunk; images are flushed before their status is."""
    rows, paths = job
    images, status, size = _worker["images"], _worker["status"], _worker["size"]
    failures, done = [], []
    for row, path in zip(rows, paths, strict=True):
        try:
            images[row] = area_resize(read_gray(path, _worker["max_pixels"]), size)
            done.append(row)
        except ImageReadError as exc:
            failures.append((int(row), path, exc.reason))
    images.flush()
    status[np.asarray(done, dtype=np.int64)] = STATUS_OK
    status[np.asarray([row for row, _, _ in failures], dtype=np.int64)] = STATUS_BAD
    status.flush()
    return len(rows), failures


# -- main side --------------------------------------------------------------------------------
def _start_or_resume(partial: Path, listing: pd.DataFrame, size: int) -> None:
    """Keep a partial build of the same sources and size; else start a fresh one."""
    if partial.exists():
        try:
            manifest = json.loads((partial / MANIFEST).read_text())
            if manifest.get("complete") and manifest.get("size") == size:
                return  # finished but not yet renamed into place when the last run stopped
            previous = pd.read_csv(partial / INDEX)[SOURCE_COLUMNS]
            if (
                manifest.get("size") == size
                and manifest.get("version") == CACHE_VERSION
                and previous.equals(listing[SOURCE_COLUMNS])
                and (partial / STATUS).stat().st_size == len(listing)
            ):
                return
        except (OSError, ValueError, KeyError):
            pass
        log.info("discarding the partial cache in %s: its sources or settings differ", partial)
        shutil.rmtree(partial)
    needed = len(listing) * size * size
    try:
        partial.mkdir(parents=True)
        write_csv_atomic(listing, partial / INDEX, index=False)
        # Reserve the space now: a memory map that runs out of disk mid-build dies with SIGBUS.
        with open(partial / IMAGES, "wb") as handle:
            reserve_space(handle, max(needed, 1))
        with open(partial / STATUS, "wb") as handle:
            handle.truncate(len(listing))
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise DataError(
            f"cannot create the cache in {partial}: {exc.strerror or exc}. It needs "
            f"{needed / 1e9:.1f} GB ({len(listing)} images of {size} px); free space or give "
            "cache_dir=<another folder>."
        ) from exc
    write_json_atomic(
        partial / MANIFEST,
        {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "size": size,
            "interpolation": INTERPOLATION,
            "count": len(listing),
            "complete": False,
        },
        indent=2,
    )


def build_cache(
    root: str | Path,
    size: int = 256,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    chunk_size: int = 64,
    force: bool = False,
    progress: bool = True,
    max_pixels: int | None = None,
) -> Path:
    """Build (or bring up to date) the ``size`` px cache of every image under ``root`` (NIH's
    PNGs, or the JPEGs of CheXpert's or MIMIC-CXR-JPG's folder tree, PadChest's 16-bit PNGs,
    VinDr-CXR's, RSNA's and SIIM's DICOMs: ``images.list_images``), each decoded as training
    decodes it (``images.read_gray``: windowing, rescale, MONOCHROME1 inverted); an
    image declaring more than ``max_pixels`` pixels is recorded as unreadable, never decoded
    (``chexnet-prepare``'s settings judge ``size`` and the rest first)."""
    size = int(size)
    max_pixels = check_max_pixels(max_pixels)
    root = Path(root).expanduser()
    folder = cache_folder(cache_dir or default_cache_dir(root), size)
    images = list_images(root)
    if not images:
        raise DataError(
            f"no images under {root}: expected NIH's {root}/images/*.png (or images_NNN/images/), "
            "or a dataset's folder tree of PNG/JPEG/DICOM files (CheXpert, MIMIC-CXR-JPG, "
            "PadChest, VinDr-CXR, RSNA, SIIM)"
        )
    listing = source_listing(images, root)
    if not force and _up_to_date(folder, size, listing):
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot write the cache under {folder.parent} ({exc}); give cache_dir=<writable folder>"
        ) from exc

    with build_lock(folder) as waited:
        if waited and not force and _up_to_date(folder, size, listing):
            return folder  # the other build made it
        partial = folder.with_name(folder.name + ".partial")
        try:
            return _build(partial, folder, listing, images, size, chunk_size, workers, progress,
                          max_pixels)  # fmt: skip
        except OSError as exc:
            if isinstance(exc, DiskFullError) or exc.errno not in DISK_FULL:
                raise
            free = free_bytes(partial)
            raise DiskFullError(
                f"no space left on the disk of {partial} while building the cache "
                f"({exc.strerror or exc}; {size_text(max(free, 0))} free now): the chunks "
                "finished so far are kept; free space there and rerun to resume, or give "
                "cache_dir=<another folder>"
            ) from exc


@contextmanager
def build_lock(folder: Path) -> Iterator[bool]:
    """Hold ``<size>px.lock`` beside the cache ``folder`` while building it: a second
    ``chexnet-prepare`` of the same cache waits for the first, then finds it up to date. Yields
    whether it had to wait."""
    lock = folder.with_name(folder.name + ".lock")
    if fcntl is None:
        yield False
        return
    try:
        handle = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise DataError(
            f"cannot create the lock file {lock} ({exc.strerror or exc}); give "
            "cache_dir=<a writable folder>"
        ) from exc
    try:
        waited = False
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning(
                "another chexnet-prepare is building %s (it holds %s): waiting for it to finish, "
                "then using its cache (Ctrl-C to stop waiting)",
                folder, lock,
            )  # fmt: skip
            fcntl.flock(handle, fcntl.LOCK_EX)
            waited = True
        yield waited
    finally:
        os.close(handle)  # releases the lock


def _build(
    partial: Path, folder: Path, listing: pd.DataFrame, images: dict[str, Path], size: int,
    chunk_size: int, workers: int | None, progress: bool, max_pixels: int | None,
) -> Path:  # fmt: skip
    """Start or resume the build in ``partial``, decode what is left, publish it as ``folder``."""
    _start_or_resume(partial, listing, size)
    if json.loads((partial / MANIFEST).read_text()).get("complete"):
        return _publish(partial, folder)
    status = np.fromfile(partial / STATUS, dtype=np.uint8)
    todo = np.flatnonzero(status == STATUS_TODO)
    if len(todo) < len(listing):
        log.info(
            "resuming %s: %d of %d images already done",
            partial,
            len(listing) - len(todo),
            len(listing),
        )
    paths = [str(images[name]) for name in listing["Image Index"]]
    _decode_all(partial, paths, todo, size, chunk_size, workers, progress, max_pixels)
    return _finish(partial, folder, listing)


def _up_to_date(folder: Path, size: int, listing: pd.DataFrame) -> bool:
    """Whether ``folder`` is a complete cache of exactly these sources (else say why it is rebuilt)."""
    if not folder.exists():
        return False
    try:
        current = open_cache(folder, size)
        if current.index[SOURCE_COLUMNS].equals(listing[SOURCE_COLUMNS]):
            log.info("%s is up to date (%d images)", folder, len(listing))
            return True
        reason = "the source images changed (added, removed or modified)"
    except StaleCache as exc:
        reason = str(exc)
    log.warning("rebuilding %s: %s", folder, reason)
    return False


def _decode_all(
    partial: Path, paths: list[str], todo: np.ndarray, size: int, chunk_size: int,
    workers: int | None, progress: bool, max_pixels: int | None = None,
) -> None:  # fmt: skip
    """Decode the ``todo`` rows of ``paths`` into the partial cache, in chunks, across processes;
    unreadable files are appended to its errors file."""
    jobs = [
        (todo[start : start + chunk_size], [paths[i] for i in todo[start : start + chunk_size]])
        for start in range(0, len(todo), chunk_size)
    ]
    workers = max(1, min(int(workers or os.cpu_count() or 1), len(jobs) or 1))
    log.info(
        "decoding %d images to %d px with %d process(es) into %s", len(todo), size, workers, partial
    )
    with (
        open(partial / ERRORS, "a") as errors,
        tqdm(total=len(todo), unit="img", disable=not progress) as bar,
    ):

        def record(result: tuple[int, list[tuple[int, str, str]]]) -> None:
            count, failures = result
            for row, path, reason in failures:
                errors.write(json.dumps({"row": row, "path": path, "reason": reason}) + "\n")
                log.warning("cannot read %s: %s", path, reason)
            errors.flush()
            bar.update(count)

        if workers == 1:
            try:
                _open_worker(str(partial), len(paths), size, max_pixels=max_pixels)
                for job in jobs:
                    record(_decode_chunk(job))
            finally:
                _worker.clear()
        else:
            context = multiprocessing.get_context("spawn")
            args = (str(partial), len(paths), size, os.getpid(), max_pixels)
            try:
                with ProcessPoolExecutor(workers, context, _open_worker, args) as pool:
                    for result in pool.map(_decode_chunk, jobs):
                        record(result)
            except BrokenProcessPool as exc:
                raise DataError(
                    f"a decoding process died while building {partial} (out of memory or disk?); "
                    "the chunks finished so far are kept — rerun to resume"
                ) from exc


def _finish(partial: Path, folder: Path, listing: pd.DataFrame) -> Path:
    status = np.fromfile(partial / STATUS, dtype=np.uint8)
    if (status == STATUS_TODO).any():
        raise DataError(
            f"{partial}: {(status == STATUS_TODO).sum()} images were not decoded; rerun"
        )
    reasons: dict[int, str] = {}
    if (partial / ERRORS).exists():
        for line in (partial / ERRORS).read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line torn by an interrupted run
                continue
            reasons[entry["row"]] = entry["reason"]
    index = listing.copy()
    index["status"] = np.where(status == STATUS_OK, "ok", "bad")
    index["error"] = [
        reasons.get(row, "unreadable") if value == STATUS_BAD else ""
        for row, value in enumerate(status)
    ]
    write_csv_atomic(index, partial / INDEX, index=False)
    manifest = json.loads((partial / MANIFEST).read_text())
    manifest.update({"complete": True, "bad": int((status == STATUS_BAD).sum())})
    write_json_atomic(partial / MANIFEST, manifest, indent=2)
    (partial / STATUS).unlink()
    (partial / ERRORS).unlink(missing_ok=True)
    return _publish(partial, folder)


def _publish(partial: Path, folder: Path) -> Path:
    """Rename a complete build into place (replacing an older cache)."""
    manifest = json.loads((partial / MANIFEST).read_text())
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(partial, folder)
    shutil.rmtree(old, ignore_errors=True)
    bad = manifest["bad"]
    log.info(
        "%s: %d images of %d px%s",
        folder,
        manifest["count"],
        manifest["size"],
        f"; {bad} unreadable (listed with their reason in {folder / INDEX})" if bad else "",
    )
    return folder
