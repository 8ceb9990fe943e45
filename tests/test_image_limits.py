"""One size guard (``max_pixels``, conf/decode/default.yaml) for every decoder: PNG, JPEG and
DICOM of every transfer syntax are refused from their header, before their pixels are allocated,
and predict, visualize, prepare and the service all apply it with the shipped setting."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import compose_config, random_checkpoint
from PIL import Image
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)
from test_dicom import write_dicom

from chexnet_pl.data.image_limits import check_max_pixels
from chexnet_pl.data.images import read_gray
from chexnet_pl.errors import ConfigError, ImageReadError, ImageTooLargeError
from chexnet_pl.serving.decode import UploadError, decode_image

# PIL's own warning above 89 MP is silenced by the project (its guard speaks instead); pytest
# resets warning filters for each test, so it is silenced here too.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

SHIPPED_MAX_PIXELS = compose_config("predict", None, "ckpt=unused").max_pixels
HUGE = (
    9_500  # 9500×9500 = 90 MP: over the shipped limit and PIL's warning size, under its own limit
)


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A PNG of a few hundred bytes whose header declares ``width``×``height`` gray pixels."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))  # fmt: skip
    return path


def jpeg_declaring(path: Path, width: int, height: int) -> Path:
    """A real 16×16 JPEG whose start-of-frame segment is edited to declare another size."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height (2), width (2)
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


def dicom_declaring(path: Path, syntax, rows: int, columns: int) -> Path:
    """A 64×64 DICOM in ``syntax`` whose header declares ``rows``×``columns``."""
    write_dicom(path, np.zeros((64, 64), np.uint8))
    ds = pydicom.dcmread(path)
    if syntax.is_compressed:
        ds.compress(syntax)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    ds.Rows, ds.Columns = rows, columns
    ds.save_as(path, enforce_file_format=True, implicit_vr=syntax.is_implicit_VR)
    return path


MAKERS = {
    "png": lambda p: png_declaring(p.with_suffix(".png"), HUGE, HUGE),
    "jpeg": lambda p: jpeg_declaring(p.with_suffix(".jpg"), HUGE, HUGE),
    **{
        f"dicom-{syntax.name}": (lambda s: lambda p: dicom_declaring(p, s, HUGE, HUGE))(syntax)
        for syntax in (
            ExplicitVRLittleEndian,
            ImplicitVRLittleEndian,
            RLELossless,
            JPEG2000Lossless,
            DeflatedExplicitVRLittleEndian,
        )
    },  # fmt: skip
}


@pytest.mark.parametrize("kind", list(MAKERS))
def test_every_decoder_refuses_a_declared_size_before_allocating(kind, tmp_path):
    path = MAKERS[kind](tmp_path / "bomb.dcm")
    assert path.stat().st_size < 20_000
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLargeError) as error:
            read_gray(path, max_pixels=SHIPPED_MAX_PIXELS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"{path.name}: declares 9500×9500 pixels (90.2 MP), more than the 40 MP" in str(
        error.value
    )
    assert peak < 30 * 2**20, f"{peak / 2**20:.0f} MB traced before the refusal"


def test_pils_own_limit_is_said_the_same_way(tmp_path):
    """Above 179 MP PIL refuses an image itself, before the guard sees its size."""
    path = png_declaring(tmp_path / "giant.png", 30_000, 30_000)
    match = r"giant.png: declares 900,000,000 pixels \(900 MP\), more than the 40 MP allowed"
    with pytest.raises(ImageTooLargeError, match=match):
        read_gray(path, max_pixels=SHIPPED_MAX_PIXELS)


@pytest.mark.parametrize("kind", ["png", "jpeg", "dicom-RLE Lossless"])
def test_the_service_uses_the_same_guard(kind, tmp_path):
    data = MAKERS[kind](tmp_path / "bomb.dcm").read_bytes()
    with pytest.raises(UploadError, match="declares 9500×9500 pixels") as error:
        decode_image(data, SHIPPED_MAX_PIXELS)
    assert error.value.status == 413


def test_images_within_the_limit_decode(tmp_path):
    gray = np.arange(64 * 48, dtype=np.uint32).reshape(48, 64).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "ok.png")
    np.testing.assert_array_equal(read_gray(tmp_path / "ok.png", max_pixels=64 * 48), gray)
    with pytest.raises(ImageTooLargeError, match=r"declares 64×48 pixels"):
        read_gray(tmp_path / "ok.png", max_pixels=64 * 48 - 1)


@pytest.mark.parametrize("value", [0, -5, 1.5, "many", True])
def test_the_setting_is_checked(value):
    with pytest.raises(ConfigError, match="max_pixels="):
        check_max_pixels(value)
    assert check_max_pixels(None) is None and check_max_pixels(40_000_000) == 40_000_000


def test_predict_applies_the_setting(tmp_path):
    """``predict`` with the shipped config: a bomb in a folder is skipped with its reason, the
    other image predicted."""
    from chexnet_pl.predict import predict

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(folder / "fine.png")
    png_declaring(folder / "bomb.png", HUGE, HUGE)
    ckpt = random_checkpoint(tmp_path / "m.ckpt", "resnet18", image_size=32)
    out = predict(compose_config("predict", tmp_path / "run", f"ckpt={ckpt}", f"images={folder}",
                                 f"out={tmp_path / 'out'}", "method=cam"))  # fmt: skip
    assert list(pd.read_csv(out / "predictions.csv")["Image Index"]) == ["fine.png"]
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped["Image Index"].tolist() == ["bomb.png"]
    assert skipped["reason"][0].startswith("declares 9500×9500 pixels")


def test_prepare_applies_the_setting(synthetic_root, tmp_path):
    """``prepare`` records a bomb as unreadable with its reason and caches the others."""
    import shutil

    from chexnet_pl.prepare import prepare

    root = tmp_path / "nih"
    shutil.copytree(synthetic_root, root)
    victim = sorted((root / "images").glob("*.png"))[0]
    png_declaring(victim, HUGE, HUGE)
    folder = prepare(compose_config("prepare", tmp_path / "run", f"root={root}", "size=16",
                                    "workers=1", "progress=false"))  # fmt: skip
    index = pd.read_csv(folder / "index.csv").set_index("Image Index")
    assert index.at[victim.name, "status"] == "bad"
    assert index.at[victim.name, "error"].startswith("declares 9500×9500 pixels")
    assert (index["status"] == "ok").sum() == len(index) - 1


def test_visualize_applies_the_setting(synthetic_root, tmp_path):
    """``visualize`` reads the split's images through the guard: with ``max_pixels`` below the
    64 px images it stops on the first, naming it."""
    from chexnet_pl.visualize import visualize

    ckpt = random_checkpoint(
        tmp_path / "m.ckpt", "resnet18", image_size=32, root=str(synthetic_root)
    )
    cfg = compose_config("visualize", tmp_path / "run", f"ckpt={ckpt}", "label=Mass", "n=1",
                         "max_pixels=1000")  # fmt: skip
    with pytest.raises(ImageReadError, match=r"\.png: declares 64×64 pixels .*max_pixels=1000"):
        visualize(cfg)
