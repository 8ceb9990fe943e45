"""Image files a run cannot use, found in one pass before training — not on disk, failing the
header check or a full decode, or marked unreadable by the cache builder — and dealt with as the
data settings say: stop, naming every one (``error``), or leave them out (``skip``). Either way
they are listed, one row per image, in the run folder (``skipped_images.csv`` / ``bad_images.csv``).

The checks: a fast one (``find_bad_images``: header and end marker, no decode) for every image,
and a full decode (``find_undecodable``) for the splits read only after training has started.
The fast check catches empty files, non-images (DICOMs: headers that ``read_dicom`` refuses),
files cut short (no PNG IEND chunk / no JPEG end marker) and missing files, for 112,120 images in
seconds. A file whose header and end are intact but whose compressed pixels are damaged passes
it; only decoding finds that.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from chexnet_pl.data.dicom import check_dicom_header, looks_like_dicom
from chexnet_pl.data.images import read_gray
from chexnet_pl.data.nih_table import IMAGE
from chexnet_pl.errors import DataError, ImageReadError
from chexnet_pl.files import write_csv_atomic

log = logging.getLogger(__name__)

# One row per image left out of a run, whatever the reason (missing, unreadable, failed mid-epoch).
SKIPPED_IMAGES, BAD_IMAGES = "skipped_images.csv", "bad_images.csv"
REPORT_COLUMNS = ["Image Index", "split", "reason"]


def find_file_problems(
    table: pd.DataFrame,
    root: Path | None,
    cache_entries: pd.DataFrame | None,
    check_images: bool,
    decode_check: Sequence[str],
) -> tuple[pd.DataFrame, np.ndarray]:
    """``(problems, usable)``: a row per image without a file (``kind`` missing) or with an unusable
    one (``kind`` bad), with its split and reason; and which of the images *with* a file
    (``table`` rows whose ``path`` is set, in order) can be used. ``cache_entries``: the cache's
    index rows of those images when they are read from the cache (whose builder decoded every
    image in full), else the files are checked here (``check_images``, ``decode_check``)."""
    missing = table["path"].isna().to_numpy()
    present = table[~missing].reset_index(drop=True)
    paths = present["path"].astype(str)
    if cache_entries is not None:
        # prepare decoded every image in full: the ones it could not read are the bad ones.
        is_bad = (cache_entries["status"] != "ok").to_numpy()
        bad = dict(zip(paths[is_bad], cache_entries["error"][is_bad], strict=True))
    elif check_images:
        bad = dict(find_bad_images(paths.tolist()))
        bad.update(_decode_check(present, bad, decode_check))
    else:
        bad = {}
    is_bad = paths.isin(bad).to_numpy()
    problems = pd.concat(
        [
            table.loc[missing, [IMAGE, "split"]].assign(
                reason=f"not on disk under {root or 'its data root'}", kind="missing"
            ),
            present.loc[is_bad, [IMAGE, "split"]].assign(reason=paths[is_bad].map(bad), kind="bad"),
        ],
        ignore_index=True,
    )
    return problems, ~is_bad


def _decode_check(
    present: pd.DataFrame, bad: dict[str, str], splits: Sequence[str]
) -> dict[str, str]:
    """Decode the ``splits``' images in full (those the header check passed)."""
    if not splits:
        return {}
    rows = present["split"].isin(splits) & ~present["path"].astype(str).isin(bad)
    paths = present.loc[rows, "path"].astype(str).tolist()
    start = time.perf_counter()
    found = dict(find_undecodable(paths))
    log.info(
        "decoded the %d %s image(s) in full in %.1f s (data.decode_check): %d unreadable",
        len(paths), "/".join(splits), time.perf_counter() - start, len(found),
    )  # fmt: skip
    return found


def with_unmatched(problems: pd.DataFrame, unmatched: pd.DataFrame | None) -> pd.DataFrame:
    """``problems`` and the images one table names and another lacks (``unmatched``: rows of
    ``labelled.UNMATCHED_COLUMNS``), as problems of kind ``unmatched`` (``data.missing_images``
    settles them)."""
    if unmatched is None or unmatched.empty:
        return problems
    rows = unmatched.assign(
        reason=[
            f"listed in {Path(listed).name}, no row in {Path(missing).name}"
            for listed, missing in zip(unmatched["listed_in"], unmatched["missing_from"],
                                       strict=True)
        ],
        kind="unmatched",
    )  # fmt: skip
    return pd.concat([problems, rows], ignore_index=True)


@dataclass(frozen=True)
class FileReport:
    """What ``data.missing_images`` and ``data.on_bad_image`` say to do with the problems, and
    where the list goes (``report_dir``, the run folder; the working folder when unset)."""

    missing_images: str
    on_bad_image: str
    report_dir: Path | None
    root: Path | None  # named in messages

    def path(self, name: str) -> Path:
        return (self.report_dir or Path.cwd()) / name

    @property
    def skipped(self) -> Path:
        """``skipped_images.csv``, where training workers also add images that fail mid-epoch."""
        return self.path(SKIPPED_IMAGES)

    def settle(self, problems: pd.DataFrame, listed: int, source: str, writer: bool) -> None:
        """Stop, naming every problem a policy does not allow; else record what is left out.
        ``listed``: how many images ``source`` lists; ``writer``: whether this process writes
        the list (one writer per run)."""
        policy = {
            "missing": self.missing_images,
            "unmatched": self.missing_images,
            "bad": self.on_bad_image,
        }
        stopping = problems[problems["kind"].map(policy) == "error"]
        if len(stopping):
            report = self.path(BAD_IMAGES)
            self._write(report, stopping, writer)
            raise DataError("\n".join(self._describe(stopping, listed, source, report)))
        if "skip" in policy.values():  # the header too, so rows added mid-training read as a table
            self._write(self.skipped, problems, writer)
        for kind, count in problems["kind"].value_counts().items():
            what = {
                "missing": "listed images not on disk",
                "unmatched": "split rows without a metadata row",
                "bad": "unusable image file(s)",
            }[kind]
            examples = problems.loc[problems["kind"] == kind, [IMAGE, "reason"]].head(5)
            lines = "".join(f"\n  {name}: {reason}" for name, reason in examples.itertuples(False))
            log.warning(
                "data.%s=skip: leaving out %d of %d %s (all listed in %s):%s",
                "on_bad_image" if kind == "bad" else "missing_images",
                count, listed, what, self.skipped, lines,
            )  # fmt: skip

    def _describe(
        self, stopping: pd.DataFrame, listed: int, source: str, report: Path
    ) -> list[str]:
        parts = []
        missing = stopping[stopping["kind"] == "missing"]
        if len(missing):
            parts.append(
                f"{len(missing)} of {listed} images listed in {source} are not on disk"
                f"{f' under {self.root}' if self.root else ''}, "
                f"e.g. {missing[IMAGE].head(5).tolist()}. If the download is partial, set "
                "data.missing_images=skip to use only the images present."
            )
        unmatched = stopping[stopping["kind"] == "unmatched"]
        groups = (
            unmatched.groupby(["listed_in", "missing_from"], sort=False) if len(unmatched) else []
        )
        for (listed_in, missing_from), rows in groups:
            parts.append(
                f"{len(rows)} row(s) of {listed_in} name an image with no row in {missing_from}, "
                f"e.g. {rows[IMAGE].head(5).tolist()}: those tables are not of one release (or "
                "one was edited). Use the tables of one release, or set "
                "data.missing_images=skip to leave these images out."
            )
        bad = stopping[stopping["kind"] == "bad"]
        if len(bad):
            lines = "\n".join(
                f"  {name} ({split}): {reason}"
                for name, split, reason in bad[[IMAGE, "split", "reason"]]
                .head(20)
                .itertuples(False)
            )
            more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
            parts.append(
                f"{len(bad)} image file(s) cannot be used:\n{lines}{more}\n"
                "Replace them, or set data.on_bad_image=skip to train without them."
            )
        parts.append(f"All {len(stopping)} are listed in {report}.")
        return parts

    @staticmethod
    def _write(path: Path, problems: pd.DataFrame, writer: bool) -> None:
        if not writer:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        write_csv_atomic(problems[REPORT_COLUMNS], path, index=False)


PNG_END = b"IEND\xaeB`\x82"
JPEG_END = b"\xff\xd9"


def check_image(path: str | Path) -> str | None:
    """Why ``path`` cannot be used, or None when its header and end look sound."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "file not found"
    except OSError as exc:
        return f"cannot stat: {exc}"
    if size == 0:
        return "empty file (0 bytes)"
    if looks_like_dicom(path):  # VinDr-CXR, RSNA, SIIM: the header read, no pixel decoded
        return check_dicom_header(path)
    try:
        with Image.open(path) as image:
            kind, width, height = image.format, *image.size
    except UnidentifiedImageError:
        return "not an image (unrecognised header)"
    except (OSError, SyntaxError, ValueError) as exc:
        return f"unreadable header ({exc})"
    if width < 1 or height < 1:
        return f"image has no pixels ({width}x{height})"
    with open(path, "rb") as handle:
        handle.seek(max(0, size - 16))
        tail = handle.read()
    if kind == "PNG" and PNG_END not in tail:
        return "truncated PNG (no IEND chunk at the end)"
    if kind == "JPEG" and JPEG_END not in tail.rstrip(b"\x00"):
        return "truncated JPEG (no end-of-image marker)"
    return None


def find_bad_images(
    paths: Sequence[str | Path], workers: int | None = None
) -> list[tuple[str, str]]:
    """(path, reason) for every path that fails ``check_image``, in input order."""
    workers = workers or min(16, (os.cpu_count() or 1) * 4)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(pool.map(check_image, paths, chunksize=256))
    return [(str(p), r) for p, r in zip(paths, reasons, strict=True) if r is not None]


def _decode_error(path: str | Path) -> str | None:
    try:
        read_gray(path)
    except ImageReadError as exc:
        return exc.reason
    return None


def find_undecodable(
    paths: Sequence[str | Path], workers: int | None = None
) -> list[tuple[str, str]]:
    """(path, reason) for every path that fails a full decode, in input order (PIL decodes
    without holding the GIL, so threads use every core)."""
    workers = workers or min(16, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(pool.map(_decode_error, paths, chunksize=16))
    return [(str(p), r) for p, r in zip(paths, reasons, strict=True) if r is not None]
