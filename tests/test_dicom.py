"""DICOM input: DICOMs written from the real NIH sample PNGs (MONOCHROME1/2, 12-bit with rescale,
a window, a VOI LUT, compressed) read as the same pixels, and `predict` on a folder mixing PNG,
JPEG and DICOM gives the PNG's probabilities; files that are not single X-rays are refused.

Tolerances: where the DICOM holds the PNG's values exactly (8-bit, 12-bit scaled by 4095/255, a
window or LUT that maps back to them), the pixels are identical and the probabilities equal
within 1e-5 (batched float32 inference). A 12-bit image with its own low bits differs from the
PNG by at most one gray level; its probabilities are within 0.01.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import compose_config, random_checkpoint
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    MPEG4HP41,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from chexnet_pl.data.images import read_gray
from chexnet_pl.errors import DataError, ImageReadError
from chexnet_pl.predict import predict
from chexnet_pl.visualization.inputs import image_files

REPO = Path(__file__).resolve().parents[1]
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def write_dicom(
    path: Path,
    stored: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 8,
    frames: int = 1,
    **elements,
) -> Path:
    """A minimal, valid DX file holding ``stored`` (uint8 or uint16) uncompressed."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DX_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "TEST"
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if stored.dtype == np.uint8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def xrays(nih_sample) -> list[tuple[str, np.ndarray]]:
    """Two real NIH images (8-bit grayscale PNGs, 1024×1024)."""
    paths = sorted((nih_sample / "images").glob("*.png"))[:2]
    return [(p.stem, np.array(Image.open(p).convert("L"))) for p in paths]


def monochrome2(path: Path, gray: np.ndarray) -> tuple[Path, np.ndarray]:
    return write_dicom(path, gray), gray


def monochrome1(path: Path, gray: np.ndarray) -> tuple[Path, np.ndarray]:
    return write_dicom(path, 255 - gray, "MONOCHROME1"), gray


def twelve_bit_rescaled(path: Path, gray: np.ndarray) -> tuple[Path, np.ndarray]:
    """12-bit values with a rescale to Hounsfield-like units and no window: the stored range
    0-4095 (→ -1000..7190 after the rescale) maps to 0-255."""
    stored = np.round(gray.astype(np.float64) * 4095 / 255).astype(np.uint16)
    dicom = write_dicom(path, stored, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1000)
    return dicom, gray


def sixteen_bit_window(path: Path, gray: np.ndarray) -> tuple[Path, np.ndarray]:
    """16-bit values 1000 + 16·gray with a window exactly over them, and a strip far above it
    (clipped to white), as a collimator edge would be."""
    stored = (1000 + 16 * gray.astype(np.uint16)).astype(np.uint16)
    stored[:16] = 60000
    expected = gray.copy()
    expected[:16] = 255
    dicom = write_dicom(path, stored, bits_stored=16, WindowCenter=3040.5, WindowWidth=4081)
    return dicom, expected


def voi_lut(path: Path, gray: np.ndarray) -> tuple[Path, np.ndarray]:
    """12-bit values stored inverted (4095 − 16·gray) with a 4096-entry, 8-bit VOI LUT that undoes
    it; a window is present too and must lose to the LUT."""
    stored = (4095 - 16 * gray.astype(np.uint16)).astype(np.uint16)
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4096, 0, 8])
    item.add_new("LUTData", "US", [int(min(255, round((4095 - v) / 16))) for v in range(4096)])
    dicom = write_dicom(path, stored, bits_stored=12, VOILUTSequence=[item], WindowCenter=2048,
                        WindowWidth=4096)  # fmt: skip
    return dicom, gray


EXACT = [monochrome2, monochrome1, twelve_bit_rescaled, sixteen_bit_window, voi_lut]


@pytest.mark.parametrize("make", EXACT, ids=lambda f: f.__name__)
def test_dicom_pixels_equal_the_png(xrays, tmp_path, make):
    name, gray = xrays[0]
    dicom, expected = make(tmp_path / f"{name}.dcm", gray)
    np.testing.assert_array_equal(read_gray(dicom), expected)


def test_ignoring_the_header_would_be_caught(xrays, tmp_path):
    """The checks above would fail without each step: MONOCHROME1 not inverted, the window or
    the LUT not applied give other pixels."""
    name, gray = xrays[0]
    inverted, _ = monochrome1(tmp_path / "m1.dcm", gray)
    raw = pydicom.dcmread(inverted).pixel_array
    assert np.abs(raw.astype(int) - gray).mean() > 50
    lut, _ = voi_lut(tmp_path / "lut.dcm", gray)
    assert np.abs(pydicom.dcmread(lut).pixel_array.astype(int) // 16 - gray).mean() > 50


def test_twelve_bit_with_low_bits_is_within_one_gray_level(xrays, tmp_path):
    name, gray = xrays[0]
    rng = np.random.default_rng(0)
    stored = (gray.astype(np.uint16) * 16 + rng.integers(0, 16, gray.shape)).astype(np.uint16)
    dicom = write_dicom(tmp_path / "low_bits.dcm", stored, bits_stored=12)
    difference = np.abs(read_gray(dicom).astype(int) - gray)
    assert difference.max() <= 1 and difference.mean() > 0.1  # quantised, not copied


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=lambda s: s.name)
def test_compressed_transfer_syntaxes_are_decoded(xrays, tmp_path, syntax):
    name, gray = xrays[1]
    small = gray[::4, ::4].copy()  # 256×256: encoders in tests should take milliseconds
    plain = write_dicom(tmp_path / "plain.dcm", small)
    ds = pydicom.dcmread(plain)
    ds.compress(syntax)
    ds.save_as(tmp_path / "compressed.dcm", enforce_file_format=True)
    assert pydicom.dcmread(tmp_path / "compressed.dcm").file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read_gray(tmp_path / "compressed.dcm"), small)


def _encapsulated(path: Path, syntax, gray: np.ndarray) -> Path:
    from pydicom.encaps import encapsulate

    write_dicom(path, gray)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([b"\xff\xd8 not really compressed \xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.slow  # launches a process
def test_missing_decoder_plugin_is_named(xrays, tmp_path):
    """In a process where pylibjpeg's plugins cannot be imported (as on a machine without them),
    a JPEG-LS file is refused before decoding, naming the packages to install."""
    dicom = _encapsulated(tmp_path / "jls.dcm", JPEGLSLossless, xrays[0][1][:64, :64])
    code = (
        "import sys\n"
        "for name in ('libjpeg', 'openjpeg', 'rle', 'pylibjpeg', 'gdcm', 'jpeg_ls'):\n"
        "    sys.modules[name] = None\n"
        "from chexnet_pl.data.images import read_gray\n"
        f"read_gray({str(dicom)!r})\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "ImageReadError" in result.stderr and "compressed as JPEG-LS Lossless" in result.stderr
    assert "pip install pylibjpeg pylibjpeg-libjpeg" in result.stderr
    assert "pip install python-gdcm" in result.stderr


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda p, g: write_dicom(p, np.stack([g, g]), frames=2),
            "a multi-frame DICOM (2 frames)",
        ),
        (lambda p, g: _encapsulated(p, MPEG4HP41, g), "is not a still-image codec"),
        (
            lambda p, g: _report(p),
            "a DICOM without pixel data (Basic Text SR Storage, modality SR)",
        ),
        (lambda p, g: p.write_text("not a dicom") and p, "not a DICOM file"),
        (lambda p, g: write_dicom(p, g, "PALETTE COLOR"), "'PALETTE COLOR' is not supported"),
    ],
)
def test_files_that_are_not_single_xrays_are_refused(xrays, tmp_path, make, message):
    path = make(tmp_path / "bad.dcm", xrays[0][1][:64, :64])
    with pytest.raises(ImageReadError, match="cannot read image .*bad.dcm: .*" + _escape(message)):
        read_gray(path)


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def _report(path: Path) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    ds.save_as(path, enforce_file_format=True)
    return path


def compose_predict(output_dir: Path, *overrides: str):
    return compose_config("predict", output_dir, *overrides)


def test_predict_on_a_folder_mixing_png_jpeg_and_dicom(xrays, tmp_path):
    """Probabilities from each DICOM form equal the PNG's (1e-5); the folder's JPEG and a DICOM
    without a suffix are read too, and every image gets its overlay."""
    ckpt = random_checkpoint(tmp_path / "model.ckpt", image_size=32, seed=3)
    folder = tmp_path / "in"
    folder.mkdir()
    name, gray = xrays[0][0], xrays[0][1][::4, ::4].copy()  # 256 px: overlays draw faster
    Image.fromarray(gray).save(folder / f"{name}.png")
    Image.fromarray(xrays[1][1][::4, ::4]).save(folder / "other.jpg", quality=95)
    for make in EXACT:
        make(folder / f"{make.__name__}.dcm", gray)
    (folder / "exported_from_pacs").write_bytes((folder / "monochrome1.dcm").read_bytes())
    rng = np.random.default_rng(0)
    stored = (gray.astype(np.uint16) * 16 + rng.integers(0, 16, gray.shape)).astype(np.uint16)
    write_dicom(folder / "low_bits.dcm", stored, bits_stored=12)
    (folder / "notes.txt").write_text("not an image")

    out = predict(compose_predict(tmp_path / "run", f"ckpt={ckpt}", f"images={folder}",
                                  f"out={tmp_path / 'out'}", "method=cam", "batch_size=4"))  # fmt: skip
    table = pd.read_csv(out / "predictions.csv").set_index("Image Index")
    assert len(table) == 9 and "other.jpg" in table.index and "notes.txt" not in table.index
    png = table.loc[f"{name}.png"].to_numpy()
    for dicom in [f"{m.__name__}.dcm" for m in EXACT] + ["exported_from_pacs"]:
        if dicom == "sixteen_bit_window.dcm":
            continue  # its white strip differs from the PNG on purpose
        np.testing.assert_allclose(table.loc[dicom].to_numpy(), png, atol=1e-5, err_msg=dicom)
    np.testing.assert_allclose(table.loc["low_bits.dcm"].to_numpy(), png, atol=0.01)
    assert not np.allclose(table.loc["sixteen_bit_window.dcm"].to_numpy(), png, atol=1e-5)
    assert len(list(out.glob("*.png"))) == 9  # an overlay per image, DICOMs included


def test_same_stem_in_one_folder_is_refused(xrays, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(xrays[0][1]).save(folder / "scan.png")
    write_dicom(folder / "scan.dcm", xrays[0][1])
    with pytest.raises(DataError, match="scan.dcm and scan.png in .* would write the same outputs"):
        image_files(None, str(folder))
