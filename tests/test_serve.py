"""The web service: decoding and limits in memory, the batching worker, and the real server
(``python -m chexnet_pl.serve`` on a free loopback port) called with the real NIH sample images,
bad files and concurrent clients, for the PyTorch and the ONNX Runtime backends."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from conftest import compose_config, make_model, random_checkpoint
from PIL import Image

from chexnet_pl.data.images import read_gray
from chexnet_pl.data.transforms import area_resize
from chexnet_pl.models.module import CheXNetModule
from chexnet_pl.serving.backends import OnnxBackend, TorchBackend
from chexnet_pl.serving.batching import BatchingQueue
from chexnet_pl.serving.decode import UploadError, decode_image
from chexnet_pl.serving.export import onnx_bytes
from chexnet_pl.serving.predictor import Predictor
from chexnet_pl.serving.served_model import ServedModel
from chexnet_pl.serving.sidecar import model_description
from chexnet_pl.serving.uploads import file_from_body

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
# The service's shipped limits (conf/serve.yaml, conf/decode/default.yaml), as `serve` reads them.
SHIPPED = compose_config("serve", None, "ckpt=unused")
MAX_PIXELS = int(SHIPPED.max_pixels)
MAX_UPLOAD_BYTES = int(SHIPPED.max_upload_mb * 2**20)


def decode(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """``decode_image`` with the service's shipped limits."""
    return decode_image(data, max_pixels, MAX_UPLOAD_BYTES)


# -- building blocks, in memory -------------------------------------------------------------


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width``×``height`` 8-bit gray pixels, with one tiny IDAT:
    a few hundred bytes that would decode to gigabytes."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))  # fmt: skip


def encoded(gray: np.ndarray, fmt: str, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gray).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


def test_decode_reads_real_png_and_jpeg_like_the_training_loader(nih_sample):
    for path in sorted((nih_sample / "images").glob("*.png"))[:4]:
        expected = read_gray(path)
        assert np.array_equal(decode(path.read_bytes()), expected)
        jpeg = decode(encoded(expected, "JPEG"))
        assert jpeg.shape == expected.shape
        assert np.abs(jpeg.astype(int) - expected).mean() < 3  # lossy, but the same picture
    rgba = encoded(expected, "PNG", "RGBA")
    assert np.array_equal(decode(rgba), expected)


def test_dicom_uploads_decode_as_predict_reads_them(tmp_path):
    """A DICOM upload decodes to the pixels ``predict`` reads from the same file; one that is
    not a single X-ray (several frames, huge) is a 4xx naming why."""
    from test_dicom import write_dicom

    from chexnet_pl.data.images import read_gray

    gray = np.random.default_rng(0).integers(0, 256, (96, 80), dtype=np.uint8)
    path = write_dicom(tmp_path / "x.dcm", (gray.astype(np.uint16) * 16), bits_stored=12)
    assert np.array_equal(decode(path.read_bytes()), read_gray(path))
    frames = write_dicom(tmp_path / "f.dcm", np.stack([gray, gray]), frames=2)
    with pytest.raises(UploadError, match="multi-frame") as error:
        decode(frames.read_bytes())
    assert error.value.status == 422
    with pytest.raises(UploadError, match="declares 80×96 pixels") as error:
        decode(path.read_bytes(), max_pixels=1000)
    assert error.value.status == 413


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (b"", 400, "empty"),
        (b"Patient: Doe\nFindings: none\n", 415, "not a PNG, JPEG or DICOM"),
        (b"GIF89a" + b"\x00" * 100, 415, "not a PNG, JPEG or DICOM"),
        (
            b"\x00" * 128 + b"DICM" + b"\x00" * 64,
            422,
            "cannot use this DICOM: a DICOM without pixel data",
        ),
        (png_header_only(8_000, 8_000), 413, "declares 8000×8000 pixels"),
        (png_header_only(30_000, 30_000), 413, r"declares 900,000,000 pixels \(900 MP\)"),
        (png_header_only(100, 100), 422, "corrupt or truncated"),
        (png_header_only(0, 10), 422, "cannot use this PNG: not an image PIL can identify"),
    ],
    ids=["empty", "text", "gif", "dicom", "bomb", "huge-bomb", "truncated", "no-pixels"],
)
def test_decode_refuses_bad_uploads_with_a_status_and_message(data, status, message):
    with pytest.raises(UploadError, match=message) as error:
        decode(data)
    assert error.value.status == status


def test_multipart_body_gives_the_file_bytes_unchanged(nih_sample):
    data = next((nih_sample / "images").glob("*.png")).read_bytes()
    request = requests.Request(
        "POST", "http://127.0.0.1/", files={"file": ("x.png", data, "image/png")},
        data={"note": "a form field before\r\n--the file"},
    ).prepare()  # fmt: skip
    assert file_from_body(request.body, request.headers["Content-Type"]) == data
    assert file_from_body(data, "image/png") == data
    wrong = requests.Request("POST", "http://x/", files={"other": (None, b"abc")}).prepare()
    with pytest.raises(UploadError, match="no 'file' field"):
        file_from_body(wrong.body, wrong.headers["Content-Type"])


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"not a form", "multipart/form-data; boundary=b", "cannot be read"),
        (b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc',
         "multipart/form-data; boundary=b", "cut short"),
        (b"--b--\r\n", "multipart/form-data", "without a boundary"),
    ],
    ids=["garbage", "no-closing-boundary", "no-boundary"],
)  # fmt: skip
def test_a_malformed_multipart_body_is_a_400_saying_what_is_wrong(body, content_type, message):
    with pytest.raises(UploadError, match=message) as error:
        file_from_body(body, content_type)
    assert error.value.status == 400


def test_batching_queue_batches_waiting_jobs_and_survives_a_failing_batch():
    started = threading.Event()
    release = threading.Event()
    sizes = []

    def run_batch(jobs):
        sizes.append(len(jobs))
        if jobs == [0]:  # hold the worker so the next jobs queue up behind it
            started.set()
            release.wait(10)
        if "fail" in jobs:
            raise RuntimeError("a batch went wrong")
        return [job * 2 for job in jobs]

    queue = BatchingQueue(run_batch, max_batch=4)
    first = queue.submit(0)
    started.wait(10)
    waiting = [queue.submit(i) for i in range(1, 7)]
    release.set()
    assert first.result(10) == 0
    assert [f.result(10) for f in waiting] == [2, 4, 6, 8, 10, 12]
    assert sizes == [1, 4, 2]  # the six waiting jobs ran as two batches of at most four
    with pytest.raises(RuntimeError, match="went wrong"):
        queue.submit("fail").result(10)
    assert queue.submit(21).result(10) == 42  # the worker lives on
    queue.close()


# -- the real server -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """``python -m chexnet_pl.serve`` in a subprocess with its own empty TMPDIR and run folder."""

    def __init__(self, folder: Path, *overrides: str) -> None:
        self.folder = folder
        self.tmpdir = folder / "tmp"
        self.tmpdir.mkdir(parents=True)
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = folder / "server.out"
        command = [sys.executable, "-m", "chexnet_pl.serve", f"port={self.url.rsplit(':', 1)[1]}",
                   f"hydra.run.dir={folder / 'run'}", "access_log=false", *overrides]  # fmt: skip
        env = {**os.environ, "TMPDIR": str(self.tmpdir)}
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self._wait_ready(timeout=300)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited: {self.log.read_text()[-3000:]}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).ok:
                    return
            except requests.ConnectionError:
                time.sleep(0.5)
        self.stop()
        raise AssertionError(f"the server did not start: {self.log.read_text()[-3000:]}")

    def post(self, data: bytes, overlay: str = "none", **kwargs) -> requests.Response:
        return requests.post(
            f"{self.url}/predict", params={"overlay": overlay}, data=data, timeout=120, **kwargs
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def nih_images(nih_sample: Path, count: int) -> list[Path]:
    return sorted((nih_sample / "images").glob("*.png"))[:count]


def expected_probabilities(checkpoint: Path, paths: list[Path]) -> list[np.ndarray]:
    """What the LightningModule itself says for each image, resized as served."""
    model = CheXNetModule.load_from_checkpoint(checkpoint).eval()
    images = torch.stack([torch.from_numpy(area_resize(read_gray(p), SIZE))[None] for p in paths])
    return list(model.predict_proba(images).numpy())


def overlay_image(data_url: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert data_url.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(data_url[len(prefix) :])))


@pytest.fixture(scope="module")
def densenet_checkpoint(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.ckpt", "densenet121", SIZE)


@pytest.fixture(scope="module")
def server(tmp_path_factory, densenet_checkpoint) -> Iterator[Server]:
    """The PyTorch backend with a 1 MB upload limit (NIH's PNGs are ~0.3-0.6 MB)."""
    running = Server(
        tmp_path_factory.mktemp("server"), f"ckpt={densenet_checkpoint}", "max_upload_mb=1"
    )
    yield running
    running.stop()


@pytest.mark.slow
def test_model_and_health(server, densenet_checkpoint):
    model = requests.get(f"{server.url}/model", timeout=10).json()
    assert (
        model["checkpoint_sha256"] == hashlib.sha256(densenet_checkpoint.read_bytes()).hexdigest()
    )
    assert model["image_size"] == SIZE and len(model["classes"]) == 15
    assert model["backend"] == "torch" and model["heatmaps"] == "cam"
    assert model["max_upload_mb"] == 1
    assert model["checkpoint"] == "best.ckpt" and model["calibration"] is None
    health = requests.get(f"{server.url}/health", timeout=10).json()
    assert health["status"] == "ok" and health["backend"] == "torch"
    page = requests.get(server.url, timeout=10).text
    assert "Not a medical device" in page


@pytest.mark.slow
def test_binds_to_loopback_only_by_default(server):
    """The listening socket's local address, as the kernel lists it (/proc/net/tcp)."""
    table = Path("/proc/net/tcp")
    if not table.is_file():
        pytest.skip("no /proc/net/tcp on this system")
    port = int(server.url.rsplit(":", 1)[1])
    listening = [
        fields[1] for fields in (line.split() for line in table.read_text().splitlines()[1:])
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A"  # 0A: LISTEN
    ]  # fmt: skip
    assert listening == ["0100007F:" + f"{port:04X}"]  # 127.0.0.1, little-endian hex


@pytest.mark.slow
def test_predict_real_images_equals_the_module(server, densenet_checkpoint, nih_sample):
    paths = nih_images(nih_sample, 3)
    for path, expected in zip(
        paths, expected_probabilities(densenet_checkpoint, paths), strict=True
    ):
        answer = server.post(path.read_bytes())
        assert answer.status_code == 200, answer.text
        result = answer.json()
        got = np.array([result["probabilities"][n] for n in result["thresholds"]])
        assert np.abs(got - expected).max() < 1e-4
        table = result["findings"]
        assert [row["probability"] for row in table] == sorted(got.tolist(), reverse=True)
        assert result["top_finding"] == table[0]["finding"]
        assert all(row["above_threshold"] == (row["probability"] >= 0.5) for row in table)
        assert result["overlays"] == {}
        assert result["image"] == {"width": 1024, "height": 1024, "format": "png"}


@pytest.mark.slow
def test_multipart_jpeg_and_overlays(server, nih_sample):
    path = nih_images(nih_sample, 1)[0]
    raw = server.post(path.read_bytes(), overlay="top").json()
    form = requests.post(
        f"{server.url}/predict", params={"overlay": "top"}, timeout=120,
        files={"file": (path.name, path.read_bytes(), "image/png")},
    ).json()  # fmt: skip
    assert form["probabilities"] == raw["probabilities"]
    top = raw["top_finding"]
    assert list(raw["overlays"]) == [top] and form["overlays"] == raw["overlays"]
    assert overlay_image(raw["overlays"][top]).size == (512, 512)
    last = raw["findings"][-1]["finding"]
    other = requests.post(
        f"{server.url}/predict", params={"overlay": last, "overlay_size": 256},
        data=path.read_bytes(), timeout=120,
    ).json()  # fmt: skip
    assert list(other["overlays"]) == [last]
    assert overlay_image(other["overlays"][last]).size == (256, 256)
    everything = server.post(path.read_bytes(), overlay="all").json()
    assert list(everything["overlays"]) == list(raw["probabilities"])
    assert everything["overlays"][top] != everything["overlays"][last]
    jpeg = server.post(encoded(read_gray(path), "JPEG"), headers={"Content-Type": "image/jpeg"})
    assert jpeg.status_code == 200 and jpeg.json()["image"]["format"] == "jpeg"


@pytest.mark.slow
def test_bad_uploads_get_4xx_and_the_server_keeps_serving(server, nih_sample):
    good = nih_images(nih_sample, 1)[0].read_bytes()
    truncated = good[: len(good) // 2]
    cases = [
        (b"", {}, 400, "empty"),
        (b"just some text", {}, 415, "not a PNG, JPEG or DICOM"),
        (os.urandom(int(1.5 * 2**20)), {}, 413, "larger than this service's limit of 1 MB"),
        (png_header_only(7_000, 7_000), {}, 413, "declares 7000×7000 pixels"),
        (truncated, {}, 422, "corrupt or truncated"),
        (b"\x00" * 128 + b"DICM" + b"\x00" * 64, {}, 422, "DICOM"),
        (good, {"overlay": "Bogus"}, 422, "overlay='Bogus'"),
        (good, {"overlay": "top", "overlay_size": 100000}, 422, "overlay_size=100000"),
        (good, {"overlay_size": "big"}, 422, "query.overlay_size: Input should be a valid integer"),
    ]
    for data, params, status, message in cases:
        answer = requests.post(f"{server.url}/predict", params=params, data=data, timeout=120)
        assert answer.status_code == status, (message, answer.text)
        assert message in answer.json()["error"]
    # a too-large upload without Content-Length (chunked) is cut off the same way
    chunked = requests.post(
        f"{server.url}/predict", data=iter([os.urandom(2**19)] * 3), timeout=120
    )
    assert chunked.status_code == 413
    health = requests.get(f"{server.url}/health", timeout=10).json()
    assert health["status"] == "ok" and health["server_errors"] == 0
    assert health["client_errors"] >= len(cases) + 1
    assert server.process.poll() is None
    assert server.post(good).status_code == 200


def _memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak so far) of a process, in kB (Linux)."""
    status = Path(f"/proc/{pid}/status")
    if not status.is_file():
        pytest.skip("no /proc/<pid>/status on this system")
    fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


@pytest.mark.slow
def test_bad_dicoms_and_a_deflate_bomb_get_4xx_in_bounded_memory(server, tmp_path, nih_sample):
    """Issue 23's DICOMs on the real server: each a 4xx with a JSON message; the 64 KB Deflated
    file inflating to 64 MB is stopped at the upload limit (1 MB here; 50 MB shipped, see
    ``test_deflate_bomb_with_the_shipped_limits``), and the server's peak memory barely moves."""
    from test_dicom import (
        cut_in_pixel_length,
        deflate_bomb,
        deflated,
        rle_declaring,
        two_frames_unannounced,
    )

    zeros = np.zeros((64, 64), np.uint8)
    cases = [
        (deflate_bomb(tmp_path / "bomb.dcm"), 413, "its Deflated data inflates to more than 1 MB"),
        (deflated(tmp_path / "lie.dcm", np.zeros((1024, 1024), np.uint16), declare=(64, 64)),
         422, "KB its header accounts for (a deflate bomb, or a damaged file)"),
        (cut_in_pixel_length(tmp_path / "cut.dcm", zeros), 422, "corrupt or truncated DICOM"),
        (rle_declaring(tmp_path / "rle.dcm", zeros, 40_000, 40_000), 413,
         "this DICOM declares 40000×40000 pixels (1,600 MP), more than the 40 MP allowed"),
        (two_frames_unannounced(tmp_path / "two.dcm", zeros), 422,
         "its pixel data holds 2 frames of 64×64"),
    ]  # fmt: skip
    before = _memory_kb(server.process.pid)
    for path, status, message in cases:
        answer = server.post(path.read_bytes())
        assert answer.status_code == status, (path.name, answer.text)
        assert message in answer.json()["error"], answer.text
    after = _memory_kb(server.process.pid)
    # the server's peak memory grows by less than 200 MB (before the fix: +2.3 GB for the bomb)
    assert after["VmHWM"] - before["VmHWM"] < 200 * 1024, (before, after)
    health = requests.get(f"{server.url}/health", timeout=10).json()
    assert health["status"] == "ok" and health["server_errors"] == 0
    assert server.post(nih_images(nih_sample, 1)[0].read_bytes()).status_code == 200
    log = server.log.read_text()
    assert "Traceback" not in log and "pydicom" not in log


def test_deflate_bomb_with_the_shipped_limits(tmp_path):
    """With the shipped limits (50 MB uploads, 40 MP): the 64 MB it inflates to is refused."""
    from test_dicom import deflate_bomb

    with pytest.raises(UploadError, match="inflates to more than 50 MB") as error:
        decode(deflate_bomb(tmp_path / "bomb.dcm").read_bytes())
    assert error.value.status == 413


@pytest.mark.slow
def test_a_foreign_host_header_is_refused(server):
    """DNS rebinding: a request naming another host than the loopback one is a 400 with a JSON
    message; the loopback names are answered."""
    port = server.url.rsplit(":", 1)[1]
    for host in (
        "evil.example",
        f"evil.example:{port}",
        "192.168.1.20",
        f"127.0.0.1.evil.example:{port}",
    ):
        answer = requests.get(f"{server.url}/model", headers={"Host": host}, timeout=10)
        assert answer.status_code == 400, (host, answer.text)
        assert "does not answer requests for host" in answer.json()["error"]
        assert "allowed_hosts=" in answer.json()["error"]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}"):
        assert requests.get(f"{server.url}/health", headers={"Host": host}, timeout=10).ok, host
    refused = server.post(b"x", headers={"Host": "evil.example"})
    assert refused.status_code == 400


@pytest.mark.slow
def test_model_description_schema_and_no_docs_page(server, densenet_checkpoint):
    """``GET /model`` names the checkpoint's file, not where it lies; ``/openapi.json`` describes
    the upload; ``/docs`` and ``/redoc`` answer 404 with a message pointing at it."""
    text = requests.get(f"{server.url}/model", timeout=10).text
    model = requests.get(f"{server.url}/model", timeout=10).json()
    assert model["checkpoint"] == densenet_checkpoint.name
    assert str(densenet_checkpoint.parent) not in text and model["calibration"] is None
    schema = requests.get(f"{server.url}/openapi.json", timeout=10).json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"image/png", "image/jpeg", "application/dicom", "multipart/form-data"} <= set(body)
    for page in ("docs", "redoc"):
        answer = requests.get(f"{server.url}/{page}", timeout=10)
        assert answer.status_code == 404 and "/openapi.json" in answer.json()["error"]


class _FailingBackend:
    """A backend whose model fails, as a bug or an exhausted GPU would make it."""

    name = "torch"
    heatmaps = "none"
    has_cams = False

    def run(self, images):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


@contextmanager
def app_on_loopback(app) -> Iterator[str]:
    """``app`` served by uvicorn in a thread on a free loopback port; yields its URL."""
    import uvicorn

    port = free_port()
    running = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                            access_log=False))  # fmt: skip
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    try:
        while not running.started:
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        running.should_exit = True
        thread.join(30)


def test_a_fault_of_the_service_says_what_the_user_can_do(caplog):
    """A 500: the JSON message (shown by the page) says it is the service's fault, what to do,
    and a reference the log has with the traceback; the service goes on."""
    from chexnet_pl.serving.app import Limits, create_app
    from chexnet_pl.serving.hosts import allowed_host_names

    card = model_description("m.ckpt", "resnet18", ["Mass", "Edema"], 32, [0.5, 0.5], None,
                      ["probabilities"], checkpoint_sha256="0" * 64)  # fmt: skip
    predictor = Predictor(_FailingBackend(), card)
    hosts = allowed_host_names("127.0.0.1", None)
    image = encoded(np.zeros((40, 40), np.uint8), "PNG")
    with app_on_loopback(create_app(predictor, Limits(2**20, 10**6), allowed_hosts=hosts)) as url:
        answer = requests.post(f"{url}/predict", data=image, timeout=30)
        assert answer.status_code == 500
        error, reference = answer.json()["error"], answer.json()["reference"]
        assert "a fault of the service, not something wrong with your image" in error
        assert "Try again" in error and f"reference {reference}" in error
        assert f"(reference {reference})" in caplog.text  # the log line with the traceback
        health = requests.get(f"{url}/health", timeout=10).json()
        assert health["status"] == "ok" and health["server_errors"] == 1
    predictor.close()


def test_host_names_and_limits_are_checked():
    from chexnet_pl.errors import ConfigError
    from chexnet_pl.serving.app import Limits
    from chexnet_pl.serving.hosts import allowed_host_names, host_name

    assert allowed_host_names("127.0.0.1", None) == {"127.0.0.1", "localhost", "::1"}
    assert allowed_host_names("localhost", ["xray.lab"]) == {
        "127.0.0.1",
        "localhost",
        "::1",
        "xray.lab",
    }
    assert allowed_host_names("127.0.0.1", ["*"]) is None
    assert allowed_host_names("0.0.0.0", None) is None  # reachable by any name: said in the log
    assert "xray.lab" in allowed_host_names("0.0.0.0", ["XRay.lab."])
    assert [host_name(h) for h in ("[::1]:80", "Localhost:8000", "a.b.", "::1")] == [
        "::1", "localhost", "a.b", "::1"
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="allowed_hosts='xray.lab': give a list"):
        allowed_host_names("127.0.0.1", "xray.lab")
    assert Limits.from_settings(50, 40_000_000) == Limits(50 * 2**20, 40_000_000)
    for upload, pixels, key in [(0, 10, "max_upload_mb=0"), ("big", 10, "max_upload_mb='big'"),
                                (1, 0, "max_pixels=0"), (1, None, "max_pixels=null")]:  # fmt: skip
        with pytest.raises(ConfigError, match=key):
            Limits.from_settings(upload, pixels)


@pytest.mark.slow
def test_concurrent_clients_all_answered_alike(server, nih_sample):
    paths = nih_images(nih_sample, 4)
    alone = {p.name: server.post(p.read_bytes()).json()["probabilities"] for p in paths}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda p: (p.name, server.post(p.read_bytes())), paths * 4))
    for name, answer in answers:
        assert answer.status_code == 200
        together = answer.json()["probabilities"]
        assert max(abs(together[k] - alone[name][k]) for k in together) < 1e-5
    assert requests.get(f"{server.url}/health", timeout=10).json()["server_errors"] == 0


@pytest.mark.slow
def test_uploads_never_touch_the_disk(server, nih_sample):
    """Everything the server wrote during the tests above: its log and Hydra's config, no image."""
    server.post(nih_images(nih_sample, 1)[0].read_bytes())
    assert not any(server.tmpdir.iterdir())  # nothing spooled to the temporary folder
    written = [p.name for p in (server.folder / "run").rglob("*") if p.is_file()]
    assert sorted(written) == ["config.yaml", "hydra.yaml", "overrides.yaml", "serve.log"]


@pytest.mark.slow
def test_onnx_backend_answers_as_pytorch_and_keeps_uploads_when_asked(tmp_path, nih_sample):
    checkpoint = random_checkpoint(tmp_path / "resnet.ckpt", "resnet18", SIZE)
    kept = tmp_path / "kept"
    onnx = Server(tmp_path / "onnx", f"ckpt={checkpoint}", "backend=onnx", f"save_uploads={kept}")
    try:
        model = requests.get(f"{onnx.url}/model", timeout=10).json()
        assert model["backend"] == "onnx" and model["heatmaps"] == "cam"
        paths = nih_images(nih_sample, 2)
        for path, expected in zip(paths, expected_probabilities(checkpoint, paths), strict=True):
            result = onnx.post(path.read_bytes(), overlay="top").json()
            got = np.array([result["probabilities"][n] for n in model["classes"]])
            assert np.abs(got - expected).max() < 1e-4
            assert overlay_image(result["overlays"][result["top_finding"]]).size == (512, 512)
        assert onnx.post(b"not an image").status_code == 415
        saved = sorted(p.read_bytes() for p in kept.iterdir())
        assert saved == sorted(p.read_bytes() for p in paths)  # decoded uploads only, unchanged
    finally:
        onnx.stop()


# -- the page, in a real headless browser ------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture
def browser(tmp_path):
    """Debian's chromium + chromium-driver through Selenium (``make browser`` installs them)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.skip(f"{missing} not installed (make browser installs Debian's chromium and "
                    "chromium-driver, as root with apt-get)")  # fmt: skip
    from selenium import webdriver

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for a driver online
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1100,980",
    ):
        options.add_argument(flag)  # fmt: skip
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(service=service, options=options)
    yield driver
    driver.quit()


@pytest.mark.slow
def test_page_in_a_real_browser(server, browser, nih_sample, tmp_path):
    """Upload an X-ray, wait for the table and the overlay, compare with the API, switch the
    finding and see the overlay change; the screenshot stays in the test's tmp folder."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    path = nih_images(nih_sample, 2)[1]
    api = server.post(path.read_bytes()).json()
    browser.get(server.url)
    assert "Not a medical device" in browser.find_element(By.ID, "notice").text
    wait = WebDriverWait(browser, 120)
    wait.until(lambda b: "densenet121" in b.find_element(By.ID, "model-info").text)
    browser.find_element(By.ID, "file").send_keys(str(path))

    def state() -> str:
        return browser.find_element(By.TAG_NAME, "body").get_attribute("data-state")

    wait.until(lambda b: state() in ("ready", "error"))
    assert state() == "ready", browser.find_element(By.ID, "error").text
    rows = browser.find_elements(By.CSS_SELECTOR, "#predictions tbody tr")
    assert len(rows) == 15
    assert rows[0].get_attribute("data-finding") == api["top_finding"]
    shown = [float(r.find_elements(By.TAG_NAME, "td")[1].text) for r in rows]
    assert shown == sorted(shown, reverse=True)
    assert shown[0] == pytest.approx(api["findings"][0]["probability"], abs=5e-4)
    overlay = browser.find_element(By.ID, "overlay")
    assert overlay.get_attribute("data-finding") == api["top_finding"]
    loaded = "return arguments[0].complete && arguments[0].naturalWidth"
    wait.until(lambda b: b.execute_script(loaded, overlay))
    first_source = overlay.get_attribute("src")
    assert first_source.startswith("data:image/png;base64,")
    browser.save_screenshot(str(tmp_path / "page_top_finding.png"))

    least = api["findings"][-1]["finding"]
    Select(browser.find_element(By.ID, "finding")).select_by_value(least)
    wait.until(lambda b: overlay.get_attribute("data-finding") == least and state() == "ready")
    wait.until(lambda b: b.execute_script(loaded, overlay))
    assert overlay.get_attribute("src") != first_source
    assert least.replace("_", " ") in browser.find_element(By.ID, "caption").text
    screenshot = tmp_path / "page.png"
    browser.save_screenshot(str(screenshot))
    assert Image.open(screenshot).size[0] > 0


@pytest.mark.slow  # over ~8 s: the slow tier keeps make test-fast under 3 min
def test_a_head_without_cam_gets_grad_cam_on_torch_and_a_422_on_onnx(nih_sample):
    """AlexNet (an MLP head): Grad-CAM through the PyTorch backend; its ONNX export has no maps."""
    size = 128  # AlexNet's feature map is 3×3 here (1×1 at 64 px: a constant map)
    torch.manual_seed(0)
    module = make_model(backbone="alexnet").eval()
    card = model_description("alexnet.ckpt", "alexnet", module.class_names, size, [0.5] * 15, None,
                      ["probabilities"], checkpoint_sha256="0" * 64)  # fmt: skip
    image = area_resize(read_gray(nih_images(nih_sample, 1)[0]), size)
    on_torch = Predictor(TorchBackend(module.net), card)
    result = on_torch.submit(image, on_torch.heat_choice("top")).result(120)
    ((index, heat),) = result.maps.items()
    assert index == int(np.argmax(result.probabilities))
    assert heat.shape == (size, size) and heat.min() >= 0 and heat.max() == pytest.approx(1)
    on_onnx = Predictor(OnnxBackend(onnx_bytes(ServedModel(module.net), size)), card)
    with pytest.raises(UploadError, match="no heat maps on the onnx backend") as error:
        on_onnx.heat_choice("top")
    assert error.value.status == 422
    plain = on_onnx.submit(image, on_onnx.heat_choice("none")).result(120)
    assert np.abs(plain.probabilities - result.probabilities).max() < 1e-4 and not plain.maps
    on_torch.close()
    on_onnx.close()
