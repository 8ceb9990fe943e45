"""Fetch one file over HTTP(S), resumably: to ``<name>.part``, resumed with Range requests after
a dropped connection or a killed run, and renamed to ``<name>`` only when its length (and
checksum, where one is given) is right; a file that fails its checksum becomes ``<name>.bad``.
"""

from __future__ import annotations

import http.client
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

from chexnet_pl.errors import DataError
from chexnet_pl.files import file_digest

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class DownloadError(DataError):
    """A file could not be fetched, or what arrived is not what was expected."""


@dataclass(frozen=True)
class Fetched:
    path: Path
    size: int
    sha256: str
    resumed_from: int  # bytes already on disk when this run started on the file


def _check_digest(path: Path, expected: str | None) -> str:
    """sha256 of ``path``; raises when ``expected`` ("<hex>" = sha256, or "md5:<hex>") differs."""
    sha256 = file_digest(path, "sha256")
    if expected:
        algorithm, _, value = expected.rpartition(":")
        algorithm = algorithm or "sha256"
        if algorithm not in ("sha256", "sha1", "md5"):
            raise DownloadError(
                f"checksum {expected!r} for {path.name}: use '<sha256 hex>', 'sha1:<hex>' or 'md5:<hex>'"
            )
        actual = sha256 if algorithm == "sha256" else file_digest(path, algorithm)
        if actual.lower() != value.lower():
            raise DownloadError(
                f"{path.name}: {algorithm} is {actual}, expected {value}. The file is corrupt or "
                f"not the released one; it was moved to {path.name}.bad — rerun to fetch it again."
            )
    return sha256


def _range_start(value: str | None) -> int | None:
    """``bytes 100-199/1000`` → 100."""
    if not value or not value.startswith("bytes ") or "-" not in value:
        return None
    start = value[len("bytes ") :].split("-", 1)[0].strip()
    return int(start) if start.isdigit() else None


def _total_from_content_range(value: str | None) -> int | None:
    """``bytes 100-199/1000`` or ``bytes */1000`` → 1000."""
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def fetch(
    url: str,
    dest: Path,
    *,
    checksum: str | None = None,
    retries: int = 5,
    timeout_s: float = 60.0,
    backoff_s: float = 2.0,
    progress: bool = True,
    moved: str = "check the URL",
) -> Fetched:
    """Fetch ``url`` to ``dest``, resuming ``dest.part`` with Range requests; atomic at the end.

    ``retries`` counts tries in a row that brought no new bytes (with exponential backoff): a
    connection that drops again and again but moves the file forward each time is not given up.
    ``moved``: what to do when the server says the file is not there (where to find the link).
    """
    dest = Path(dest)
    if not url.startswith(("http://", "https://")):
        raise DownloadError(f"{dest.name}: {url!r} is not an http(s) URL")
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    resumed_from = _size(part)
    last_error: Exception | None = None
    failures = 0  # in a row without progress
    while True:
        if failures > retries:
            raise DownloadError(
                f"could not fetch {dest.name} from {url}: {failures} tries in a row without "
                f"progress, the last: {last_error}. The bytes so far are kept in {part}; rerun "
                "to resume."
            )
        if failures:
            wait = min(backoff_s * 2 ** (failures - 1), 60.0)
            log.warning(
                "%s: %s; retrying in %.0f s (%d/%d)", dest.name, last_error, wait, failures, retries
            )
            time.sleep(wait)
        complete, last_error, progressed = _try_once(
            url, part, dest.name, timeout_s, progress, moved
        )
        if complete:
            break
        failures = 0 if progressed else failures + 1
    return _publish(part, dest, checksum, resumed_from)


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _try_once(
    url: str, part: Path, name: str, timeout_s: float, progress: bool, moved: str
) -> tuple[bool, Exception | None, bool]:
    """One request, resuming ``part``: (complete, the error if not, whether bytes were added).
    Errors that a retry cannot fix (a moved link, an unwritable disk) are raised."""
    have = _size(part)
    headers = {"User-Agent": "chexnet_pl-download"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        with urlopen(Request(url, headers=headers), timeout=timeout_s) as response:
            content_range = response.headers.get("Content-Range")
            if have and (response.status != 206 or _range_start(content_range) != have):
                log.info("%s: the server did not resume at byte %d; starting over", name, have)
                if response.status == 206:  # a range, but not the one asked for
                    part.unlink()
                    return False, ConnectionError(f"server answered {content_range}"), False
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            if response.status == 206:
                total = _total_from_content_range(content_range) or total
            _write_body(response, part, have, total, name, progress)
        size = part.stat().st_size
        if total is not None and size != total:
            return (
                False,
                ConnectionError(f"connection closed at {size} of {total} bytes"),
                size > have,
            )
        return True, None, True
    except HTTPError as exc:
        exc.close()
        if exc.code == 416 and have:  # asked past the end: the part may already be whole
            if _total_from_content_range(exc.headers.get("Content-Range")) == have:
                return True, None, False
            part.unlink()  # longer than the file on the server: not that file
            return False, exc, False
        if exc.code in (401, 403, 404, 410):
            raise DownloadError(
                f"{url} answered HTTP {exc.code} ({exc.reason}) for {name}. The link may "
                f"have moved: {moved}."
            ) from exc
        return False, exc, False
    except (URLError, http.client.HTTPException, OSError) as exc:
        return False, exc, _size(part) > have


def _write_body(
    response, part: Path, have: int, total: int | None, name: str, progress: bool
) -> None:
    """Append the response body to ``part`` (or start it anew when ``have`` is 0)."""
    try:
        out = open(part, "ab" if have else "wb")
    except OSError as exc:
        raise DownloadError(f"cannot write {part}: {exc.strerror or exc}") from exc
    bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
               disable=not progress)  # fmt: skip
    with out, bar:
        while block := response.read(CHUNK):
            try:
                out.write(block)
            except OSError as exc:
                raise DownloadError(
                    f"cannot write {part}: {exc.strerror or exc} (is the disk full?); "
                    "the bytes so far are kept — rerun to resume"
                ) from exc
            bar.update(len(block))


def _publish(part: Path, dest: Path, checksum: str | None, resumed_from: int) -> Fetched:
    """Check a complete ``part`` and rename it to ``dest`` (a failed check: ``dest.bad``)."""
    try:
        sha256 = _check_digest(part, checksum)
    except DownloadError:
        os.replace(part, dest.with_name(dest.name + ".bad"))
        raise
    os.replace(part, dest)
    log.info("%s: %d bytes, sha256 %s", dest.name, dest.stat().st_size, sha256)
    return Fetched(dest, dest.stat().st_size, sha256, resumed_from)
