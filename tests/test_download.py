"""The NIH download against a real HTTP server on 127.0.0.1: Range resume, integrity, extraction."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import compose_config, small_datamodule
from PIL import Image

from chexnet_pl.data.download import DownloadError, download_nih, fetch
from chexnet_pl.download import download

METADATA = {
    "data_entry": "Data_Entry_2017_v2020.csv",
    "train_val_list": "train_val_list.txt",
    "test_list": "test_list.txt",
}


class RangeServer:
    """Serves in-memory files with HTTP Range support; can drop a connection half way once."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop_once: set[str] = set()  # paths whose next response stops half way
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Range")))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                header = None if server.ignore_range else self.headers.get("Range")
                if header:
                    start = int(header.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.path in server.drop_once:
                    server.drop_once.discard(self.path)
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def ranges(self, path: str) -> list[str | None]:
        return [r for p, r in self.requests if p == path]


@pytest.fixture
def server():
    srv = RangeServer()
    yield srv
    srv.httpd.shutdown()


def _png_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _archive(names: list[str]) -> bytes:
    """A .tar.gz laid out as NIH's: images/<name>.png."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        folder = tarfile.TarInfo("images")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for index, name in enumerate(names):
            data = _png_bytes(index)
            info = tarfile.TarInfo(f"images/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _serve_release(server: RangeServer, synthetic_root: Path) -> dict[str, list[str]]:
    """Pack the synthetic release's images into two archives and serve them with its metadata."""
    names = sorted(p.name for p in (synthetic_root / "images").glob("*.png"))
    parts = {
        "images_001.tar.gz": names[: len(names) // 2],
        "images_002.tar.gz": names[len(names) // 2 :],
    }
    for archive, members in parts.items():
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for name in members:
                tar.add(synthetic_root / "images" / name, arcname=f"images/{name}")
        server.files[f"/{archive}"] = buffer.getvalue()
    for name in METADATA.values():
        server.files[f"/meta/{name}"] = (synthetic_root / name).read_bytes()
    return parts


def _config(root: Path, server: RangeServer, parts, extra: list[str] | None = None):
    overrides = [
        f"root={root}",
        "~archives",
        *(f"+archives.{name.removesuffix('.tar.gz')}={server.url}/{name}" for name in parts),
        "~metadata",
        *(
            f"+metadata.{key}={{file:{name},url:'{server.url}/meta/{name}'}}"
            for key, name in METADATA.items()
        ),
        "backoff_s=0",
        "retries=3",
        "progress=false",
        *(extra or []),
    ]
    return compose_config("download", None, *overrides)


def test_shipped_config_lists_the_twelve_nih_archives():
    cfg = compose_config("download", None, "root=/tmp/x")
    assert list(cfg.archives) == [f"images_{i:03d}" for i in range(1, 13)]
    assert all(
        url.startswith("https://nihcc.box.com/shared/static/") for url in cfg.archives.values()
    )
    assert {entry.file for entry in cfg.metadata.values()} == {
        "Data_Entry_2017_v2020.csv",
        "BBox_List_2017.csv",
        "train_val_list.txt",
        "test_list.txt",
    }


def test_download_extracts_a_release_the_data_module_reads(server, synthetic_root, tmp_path):
    parts = _serve_release(server, synthetic_root)
    root = tmp_path / "nih"
    state = download(_config(root, server, parts))

    expected = sorted(p.name for p in (synthetic_root / "images").glob("*.png"))
    assert sorted(p.name for p in (root / "images").glob("*.png")) == expected
    for name in expected[:5]:
        assert (root / "images" / name).read_bytes() == (
            synthetic_root / "images" / name
        ).read_bytes()
    assert {state[a]["images"] for a in parts} == {len(m) for m in parts.values()}
    assert (
        state["images_001.tar.gz"]["sha256"]
        == hashlib.sha256(server.files["/images_001.tar.gz"]).hexdigest()
    )
    assert not (root / "archives" / "images_001.tar.gz").exists()  # keep_archives=false
    assert json.loads((root / "download_state.json").read_text()) == state

    datamodule = small_datamodule(root, report_dir=str(tmp_path / "reports"))
    datamodule.setup()
    assert sum(len(ds) for ds in datamodule.datasets.values()) == len(expected)

    # A second run finds everything done and asks the server for nothing.
    server.requests.clear()
    download(_config(root, server, parts))
    assert server.requests == []


def test_connection_dropped_half_way_is_resumed_with_a_range_request(server, tmp_path):
    body = _archive([f"{i:08d}_000.png" for i in range(20)])
    server.files["/images_001.tar.gz"] = body
    server.drop_once.add("/images_001.tar.gz")
    fetched = fetch(
        f"{server.url}/images_001.tar.gz", tmp_path / "a.tar.gz", backoff_s=0, progress=False
    )

    assert fetched.path.read_bytes() == body
    ranges = server.ranges("/images_001.tar.gz")
    assert len(ranges) == 2 and ranges[0] is None
    assert ranges[1] == f"bytes={len(body) // 2}-"
    assert not (tmp_path / "a.tar.gz.part").exists()


def test_partial_file_from_a_killed_run_is_resumed(server, tmp_path):
    body = _archive([f"{i:08d}_000.png" for i in range(20)])
    server.files["/images_001.tar.gz"] = body
    (tmp_path / "a.tar.gz.part").write_bytes(body[:1000])
    fetched = fetch(
        f"{server.url}/images_001.tar.gz", tmp_path / "a.tar.gz", backoff_s=0, progress=False
    )
    assert fetched.resumed_from == 1000
    assert server.ranges("/images_001.tar.gz") == ["bytes=1000-"]
    assert fetched.path.read_bytes() == body


def test_server_without_range_support_restarts_the_file(server, tmp_path):
    body = _archive(["00000001_000.png"])
    server.files["/x.tar.gz"] = body
    server.ignore_range = True
    (tmp_path / "x.tar.gz.part").write_bytes(b"garbage that is not the start of the file")
    fetched = fetch(f"{server.url}/x.tar.gz", tmp_path / "x.tar.gz", backoff_s=0, progress=False)
    assert fetched.path.read_bytes() == body


def test_complete_part_file_is_recognised_by_a_416_answer(server, tmp_path):
    body = _archive(["00000001_000.png"])
    server.files["/x.tar.gz"] = body
    (tmp_path / "x.tar.gz.part").write_bytes(body)
    fetched = fetch(f"{server.url}/x.tar.gz", tmp_path / "x.tar.gz", backoff_s=0, progress=False)
    assert fetched.path.read_bytes() == body
    assert server.ranges("/x.tar.gz") == [f"bytes={len(body)}-"]  # one request, nothing refetched


def test_corrupt_archive_is_detected_and_nothing_of_it_is_extracted(
    server, synthetic_root, tmp_path
):
    parts = _serve_release(server, synthetic_root)
    body = bytearray(server.files["/images_002.tar.gz"])
    middle = len(body) // 2
    body[middle : middle + 64] = bytes(64)  # a damaged block: the gzip stream no longer checks out
    server.files["/images_002.tar.gz"] = bytes(body)
    root = tmp_path / "nih"

    with pytest.raises(DownloadError, match=r"images_002\.tar\.gz is corrupt.*rerun"):
        download(_config(root, server, parts))
    extracted = {p.name for p in (root / "images").glob("*.png")}
    assert extracted == set(parts["images_001.tar.gz"])  # the good archive only
    assert (root / "archives" / "images_002.tar.gz.bad").exists()
    assert not list(root.glob(".extracting-*"))
    state = json.loads((root / "download_state.json").read_text())
    assert state["images_001.tar.gz"]["extracted"] and not state["images_002.tar.gz"].get(
        "extracted"
    )

    # With the archive repaired on the server, a rerun fetches and extracts only what is left.
    _serve_release(server, synthetic_root)
    server.requests.clear()
    download(_config(root, server, parts))
    assert {p for p, _ in server.requests} == {"/images_002.tar.gz"}
    assert len(list((root / "images").glob("*.png"))) == sum(len(m) for m in parts.values())


def test_truncated_archive_is_detected(tmp_path):
    body = _archive([f"{i:08d}_000.png" for i in range(10)])
    archive = tmp_path / "archives" / "images_001.tar.gz"
    archive.parent.mkdir()
    archive.write_bytes(body[: len(body) * 2 // 3])
    from chexnet_pl.data.download import extract_images

    with pytest.raises(DownloadError, match="images_001.tar.gz is corrupt"):
        extract_images(archive, tmp_path)
    assert not (tmp_path / "images").exists() or not list((tmp_path / "images").iterdir())


def test_damage_anywhere_in_an_archive_is_detected(tmp_path):
    """Damage inside member data decodes to wrong bytes without a deflate error; only gzip's CRC at
    the end of the stream catches it, so extraction must read the stream to its end."""
    from chexnet_pl.data.download import extract_images

    body = _archive([f"{i:08d}_000.png" for i in range(30)])
    positions = range(100, len(body) - 100, len(body) // 25)
    for position in positions:
        damaged = bytearray(body)
        damaged[position : position + 64] = bytes(64)
        archive = tmp_path / f"{position}" / "images_001.tar.gz"
        archive.parent.mkdir()
        archive.write_bytes(bytes(damaged))
        with pytest.raises(DownloadError, match="is corrupt"):
            extract_images(archive, archive.parent / "root")
        assert not list((archive.parent / "root" / "images").glob("*.png"))


def test_checksum_mismatch_names_both_digests(server, tmp_path):
    server.files["/x.tar.gz"] = b"released bytes"
    with pytest.raises(DownloadError, match=r"sha256 is [0-9a-f]{64}, expected 00ff"):
        fetch(
            f"{server.url}/x.tar.gz",
            tmp_path / "x.tar.gz",
            checksum="00ff",
            backoff_s=0,
            progress=False,
        )
    assert (tmp_path / "x.tar.gz.bad").exists() and not (tmp_path / "x.tar.gz").exists()
    good = "md5:" + hashlib.md5(b"released bytes").hexdigest()
    fetched = fetch(
        f"{server.url}/x.tar.gz", tmp_path / "x.tar.gz", checksum=good, backoff_s=0, progress=False
    )
    assert fetched.path.read_bytes() == b"released bytes"


def test_missing_file_says_where_to_find_the_current_link(server, tmp_path):
    with pytest.raises(
        DownloadError, match=r"HTTP 404.*nihcc\.app\.box\.com.*archives\.<key>=<url>"
    ):
        fetch(f"{server.url}/nothing", tmp_path / "gone.tar.gz", backoff_s=0, progress=False)
    assert len(server.requests) == 1  # no retries for a file that is not there


def test_unreachable_server_keeps_the_bytes_and_says_rerun(tmp_path):
    with pytest.raises(DownloadError, match=r"2 tries in a row without progress.*rerun to resume"):
        fetch(
            "http://127.0.0.1:9/x.tar.gz",
            tmp_path / "x.tar.gz",
            retries=1,
            backoff_s=0,
            progress=False,
        )


def test_unknown_archive_in_only_is_refused(tmp_path):
    with pytest.raises(DownloadError, match="images_013"):
        download_nih(tmp_path, {"images_001": "http://x"}, {}, only=["images_013"])


def test_archive_with_a_path_outside_the_folder_is_refused(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../evil.png")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    archive = tmp_path / "images_001.tar.gz"
    archive.write_bytes(buffer.getvalue())
    from chexnet_pl.data.download import extract_images

    with pytest.raises(DownloadError, match=r"unexpected entry '\.\./\.\./evil\.png'"):
        extract_images(archive, tmp_path / "root")
    assert not (tmp_path.parent / "evil.png").exists()


def test_progress_resets_the_retry_budget(server, tmp_path):
    body = _archive([f"{i:08d}_000.png" for i in range(20)])
    server.files["/a.tar.gz"] = body
    drops = {"left": 4}
    original = server.drop_once

    class DropSeveralTimes(set):
        def __contains__(self, path):
            return drops["left"] > 0

        def discard(self, path):
            drops["left"] -= 1

    server.drop_once = DropSeveralTimes()
    fetched = fetch(
        f"{server.url}/a.tar.gz", tmp_path / "a.tar.gz", retries=1, backoff_s=0, progress=False
    )
    server.drop_once = original
    assert fetched.path.read_bytes() == body  # 4 drops, each after progress, with retries=1
    assert len(server.ranges("/a.tar.gz")) == 5


def test_unknown_checksum_algorithm_is_named(server, tmp_path):
    server.files["/x.bin"] = b"abc"
    with pytest.raises(DownloadError, match="crc32:1234.*md5:<hex>"):
        fetch(
            f"{server.url}/x.bin",
            tmp_path / "x.bin",
            checksum="crc32:1234",
            backoff_s=0,
            progress=False,
        )
