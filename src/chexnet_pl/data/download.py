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
import json
import logging
import os
import shutil
import tarfile
import zlib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from chexnet_pl.data import http_fetch
from chexnet_pl.data.http_fetch import CHUNK, DownloadError, Fetched
from chexnet_pl.files import write_json_atomic

log = logging.getLogger(__name__)

NIH_PAGE = "https://nihcc.app.box.com/v/ChestXray-NIHCC"
STATE_FILE = "download_state.json"
MOVED = (
    f"find the current one on {NIH_PAGE} and give it in the config (archives.<key>=<url> or "
    "metadata.<key>.url=<url>)"
)
# tarfile's "data" filter (Python 3.12, and 3.8.17, 3.9.17, 3.10.12, 3.11.4 on) refuses members
# that would land outside the folder, links out of it and device files; older Pythons check here.
HAS_DATA_FILTER = hasattr(tarfile, "data_filter")


def fetch(url: str, dest: Path, **options: Any) -> Fetched:
    """``http_fetch.fetch`` (its keyword ``options``), saying where NIH's current links are
    when a link has moved."""
    return http_fetch.fetch(url, dest, moved=MOVED, **options)


def extract_images(archive: Path, root: Path) -> int:
    """Extract the PNGs of one NIH archive into ``root/images/``; returns how many.

    Everything is read (so a corrupt archive is found: gzip CRC, tar headers, truncation) into a
    staging folder first; images move into ``root/images`` only when the whole archive was read.
    """
    staging = root / f".extracting-{archive.name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    names: list[str] = []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.isdir():
                    continue
                if not member.isfile():
                    raise _unexpected(archive, member)
                if PurePosixPath(member.name).suffix.lower() != ".png":
                    log.warning("%s: ignoring non-image entry %s", archive.name, member.name)
                    continue
                _extract_member(archive, tar, member, staging)
                names.append(PurePosixPath(member.name).name)
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
    for path in staging.rglob("*"):
        if path.is_file():
            os.replace(path, target / path.name)
    shutil.rmtree(staging)
    return len(names)


def _unexpected(archive: Path, member: tarfile.TarInfo) -> DownloadError:
    return DownloadError(
        f"{archive}: unexpected entry {member.name!r} (NIH archives hold only images/*.png); "
        "not extracting it"
    )


def _extract_member(
    archive: Path, tar: tarfile.TarFile, member: tarfile.TarInfo, staging: Path
) -> None:
    """One regular file of the archive into ``staging`` (under its path in the archive, or by
    its name alone on a Python without the data filter); a path out of it is refused."""
    if HAS_DATA_FILTER:
        try:
            tar.extract(member, staging, filter="data")
        except tarfile.FilterError as exc:
            raise _unexpected(archive, member) from exc
        return
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise _unexpected(archive, member)
    with tar.extractfile(member) as source, open(staging / path.name, "wb") as out:
        shutil.copyfileobj(source, out, CHUNK)


def _load_state(root: Path) -> dict:
    path = root / STATE_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DownloadError(f"{path} is not valid JSON ({exc}); delete it to start over") from exc


def _save_state(root: Path, state: dict) -> None:
    write_json_atomic(root / STATE_FILE, state, indent=2, sort_keys=True)


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
