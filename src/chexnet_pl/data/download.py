"""Download NIH ChestX-ray14 as released: 12 image archives (+ metadata files), resumable.

The command is ``chexnet-download`` (``python -m chexnet_pl.download``).

Each file is fetched to ``<name>.part`` and resumed with an HTTP Range request after a dropped
connection or a killed run; it becomes ``<name>`` only when its length (and checksum, where one is
configured) is right. Archives are checked while they are extracted (gzip CRC, tar structure,
member names) into a staging folder; only a fully readable archive's images move into
``root/images/``. ``root/download_state.json`` records what is done, so a rerun does only the rest.
"""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import os
import shutil
import tarfile
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

from chexnet_pl.errors import DataError
from chexnet_pl.files import file_digest, write_text_atomic

log = logging.getLogger(__name__)

NIH_PAGE = "https://nihcc.app.box.com/v/ChestXray-NIHCC"
STATE_FILE = "download_state.json"
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
) -> Fetched:
    """Fetch ``url`` to ``dest``, resuming ``dest.part`` with Range requests; atomic at the end.

    ``retries`` counts tries in a row that brought no new bytes (with exponential backoff): a
    connection that drops again and again but moves the file forward each time is not given up.
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
        complete, last_error, progressed = _try_once(url, part, dest.name, timeout_s, progress)
        if complete:
            break
        failures = 0 if progressed else failures + 1
    return _publish(part, dest, checksum, resumed_from)


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _try_once(
    url: str, part: Path, name: str, timeout_s: float, progress: bool
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
                f"have moved: find the current one on {NIH_PAGE} and give it in the config "
                f"(archives.<key>=<url> or metadata.<key>.url=<url>)."
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


def extract_images(archive: Path, root: Path) -> int:
    """Extract the PNGs of one NIH archive into ``root/images/``; returns how many.

    Everything is read (so a corrupt archive is found: gzip CRC, tar headers, truncation) into a
    staging folder first; images move into ``root/images`` only when the whole archive was read.
    """
    staging = root / f".extracting-{archive.name}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "images").mkdir(parents=True)
    names: list[str] = []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.isdir():
                    continue
                path = PurePosixPath(member.name)
                if not member.isfile() or path.is_absolute() or ".." in path.parts:
                    raise DownloadError(
                        f"{archive}: unexpected entry {member.name!r} (NIH archives hold only "
                        "images/*.png); not extracting it"
                    )
                if path.suffix.lower() != ".png":
                    log.warning("%s: ignoring non-image entry %s", archive.name, member.name)
                    continue
                source = tar.extractfile(member)
                with source, open(staging / "images" / path.name, "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK)
                names.append(path.name)
            # tarfile stops at the end-of-archive marker; reading on to the end of the gzip stream
            # makes gzip check its CRC and length, which catch damage inside member data.
            while tar.fileobj.read(CHUNK):
                pass
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        bad = archive.with_name(archive.name + ".bad")
        os.replace(archive, bad)
        raise DownloadError(
            f"{archive.name} is corrupt ({type(exc).__name__}: {exc}) after {len(names)} images. "
            f"It was moved to {bad}; rerun the download to fetch it again."
        ) from exc
    except DownloadError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except OSError as exc:  # writing the images, not reading the archive: the archive is kept
        shutil.rmtree(staging, ignore_errors=True)
        raise DownloadError(
            f"cannot extract {archive.name} into {root}: {exc.strerror or exc} (is the disk full, or "
            f"the folder read-only?). {archive} is kept; rerun once that is fixed."
        ) from exc
    target = root / "images"
    target.mkdir(exist_ok=True)
    for name in names:
        os.replace(staging / "images" / name, target / name)
    shutil.rmtree(staging)
    return len(names)


def _load_state(root: Path) -> dict:
    path = root / STATE_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DownloadError(f"{path} is not valid JSON ({exc}); delete it to start over") from exc


def _save_state(root: Path, state: dict) -> None:
    write_text_atomic(root / STATE_FILE, json.dumps(state, indent=2, sort_keys=True))


def download_nih(
    root: str | Path,
    archives: Mapping[str, str],
    metadata: Mapping[str, Mapping[str, str | None]],
    checksums: Mapping[str, str] | None = None,
    only: list[str] | str | None = None,
    keep_archives: bool = False,
    retries: int = 5,
    timeout_s: float = 60.0,
    backoff_s: float = 2.0,
    progress: bool = True,
) -> dict:
    """Fetch and extract what is not done yet; returns the state (per file: size, sha256, images).

    ``archives`` maps ``images_NNN`` to the URL of ``images_NNN.tar.gz``; ``metadata`` maps a key
    to ``{"file": name, "url": url or None}``; ``checksums`` is keyed like those two.
    """
    root = Path(root).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(
            f"cannot create {root}: {exc.strerror or exc}; choose another root="
        ) from exc
    wanted = ([only] if isinstance(only, str) else list(only)) if only else list(archives)
    unknown = [key for key in wanted if key not in archives]
    if unknown:
        raise DownloadError(
            f"only={unknown}: not archives of the release; use some of {list(archives)}"
        )
    state = _load_state(root)
    options = {"retries": retries, "timeout_s": timeout_s, "backoff_s": backoff_s,
               "progress": progress}  # fmt: skip
    checksums = dict(checksums or {})
    _fetch_metadata(root, metadata, checksums, state, options)
    for index, key in enumerate(wanted, 1):
        step = f"[{index}/{len(wanted)}]"
        _fetch_and_extract(root, key, archives[key], checksums, state, options, keep_archives, step)
    _log_summary(root, metadata, state)
    return state


def _fetch_metadata(
    root: Path, metadata: Mapping, checksums: Mapping[str, str], state: dict, options: dict
) -> None:
    """The CSV and list files that are not in ``root`` yet (where a URL is configured)."""
    for key, entry in metadata.items():
        name, url = entry["file"], entry.get("url")
        if (root / name).exists():
            continue
        if not url:
            log.warning(
                "%s is not in %s and metadata.%s.url is not set: download it from %s into %s",
                name, root, key, NIH_PAGE, root,
            )  # fmt: skip
            continue
        fetched = fetch(url, root / name, checksum=checksums.get(key), **options)
        state[name] = {"bytes": fetched.size, "sha256": fetched.sha256}
        _save_state(root, state)


def _fetch_and_extract(
    root: Path, key: str, url: str, checksums: Mapping[str, str], state: dict, options: dict,
    keep_archive: bool, step: str,
) -> None:  # fmt: skip
    """One image archive: fetched unless on disk, extracted, recorded in the state file."""
    name = f"{key}.tar.gz"
    if state.get(name, {}).get("extracted"):
        log.info("%s %s: already extracted", step, name)
        return
    archive = root / "archives" / name
    if not archive.exists():
        log.info("%s fetching %s", step, name)
        fetched = fetch(url, archive, checksum=checksums.get(key), **options)
        state[name] = {"bytes": fetched.size, "sha256": fetched.sha256}
        _save_state(root, state)
    count = extract_images(archive, root)
    state.setdefault(name, {}).update({"extracted": True, "images": count})
    _save_state(root, state)
    log.info("%s %s: %d images → %s", step, name, count, root / "images")
    if not keep_archive:
        archive.unlink()


def _log_summary(root: Path, metadata: Mapping, state: dict) -> None:
    images = sum(entry.get("images", 0) for entry in state.values())
    missing = [e["file"] for e in metadata.values() if not (root / e["file"]).exists()]
    log.info(
        "%s: %d images from %d archive(s)%s",
        root,
        images,
        sum(1 for entry in state.values() if entry.get("extracted")),
        f"; still missing {missing} (from {NIH_PAGE})" if missing else "",
    )
