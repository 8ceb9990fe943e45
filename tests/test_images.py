"""Finding images in both download layouts and decoding every stored mode as 8-bit gray."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from chexnet_pl.data.images import find_images, read_gray
from chexnet_pl.errors import DataError, ImageReadError


def test_real_sample_images_decode_as_8bit_gray(nih_sample):
    found = find_images(nih_sample)
    assert len(found) == 59
    modes = {}
    for name, path in found.items():
        with Image.open(path) as image:
            modes[name] = image.mode
        gray = read_gray(path)
        assert gray.dtype == np.uint8 and gray.shape == (1024, 1024)
    rgba = [n for n, m in modes.items() if m == "RGBA"]
    assert len(rgba) == 3
    with Image.open(found[rgba[0]]) as image:
        expected = np.asarray(image.convert("RGB").convert("L"))
    np.testing.assert_array_equal(read_gray(found[rgba[0]]), expected)


def _png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


def test_both_download_layouts(tmp_path):
    pixels = np.zeros((8, 8), np.uint8)
    _png(tmp_path / "flat" / "images" / "00000001_000.png", pixels)
    _png(tmp_path / "parts" / "images_001" / "images" / "00000001_000.png", pixels)
    _png(tmp_path / "parts" / "images_002" / "images" / "00000002_000.png", pixels)
    assert set(find_images(tmp_path / "flat")) == {"00000001_000.png"}
    assert set(find_images(tmp_path / "parts")) == {"00000001_000.png", "00000002_000.png"}


def test_same_image_in_two_folders_is_an_error(tmp_path):
    pixels = np.zeros((8, 8), np.uint8)
    _png(tmp_path / "images_001" / "images" / "x.png", pixels)
    _png(tmp_path / "images_002" / "images" / "x.png", pixels)
    with pytest.raises(DataError, match="x.png is in two places"):
        find_images(tmp_path)


def test_stored_modes_come_out_gray_uint8(tmp_path):
    ramp = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))
    # 16-bit with the full range → scaled down, not clipped.
    sixteen = _png(tmp_path / "16.png", ramp.astype(np.uint16) * 257)
    np.testing.assert_array_equal(read_gray(sixteen), ramp)
    # 12-bit values in a 16-bit file keep their contrast.
    twelve = _png(tmp_path / "12.png", (ramp.astype(np.int64) * 4095 // 255).astype(np.uint16))
    assert abs(int(read_gray(twelve).max()) - 240) <= 1
    palette = tmp_path / "p.png"
    Image.fromarray(ramp).convert("P").save(palette)
    np.testing.assert_array_equal(read_gray(palette), ramp)
    jpeg_named_png = tmp_path / "jpeg.png"
    Image.fromarray(ramp).save(jpeg_named_png, format="JPEG", quality=100)
    assert np.abs(read_gray(jpeg_named_png).astype(int) - ramp).max() <= 2


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"this is text, not a PNG", "not an image"),
        (None, "corrupt or truncated"),
    ],
)
def test_unreadable_files_name_path_and_reason(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    if content is None:  # a real PNG cut in half
        _png(
            tmp_path / "good.png",
            np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8),
        )
        data = (tmp_path / "good.png").read_bytes()
        content = data[: len(data) // 2]
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=reason) as err:
        read_gray(path)
    assert str(path) in str(err.value)
