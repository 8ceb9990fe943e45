"""DICOM input: DICOMs written from the real NIH sample PNGs (MONOCHROME1/2, 12-bit with rescale,
a window, a VOI LUT, compressed) read as the same pixels, and `predict` on a folder mixing PNG,
JPEG and DICOM gives the PNG's probabilities; files that are not single X-rays are refused.

Tolerances: where the DICOM holds the PNG's values exactly (8-bit, 12-bit scaled by 4095/255, a
window or LUT that maps back to them), the pixels are identical and the probabilities equal
within 1e-5 (batched float32 inference). A 12-bit image with its own low bits differs from the
PNG by at most one gray level; its probabilities are within 0.01.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import compose_config, console_script, random_checkpoint
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    MPEG4HP41,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from chexnet_pl.data.dicom import read_dicom
from chexnet_pl.data.images import read_gray
from chexnet_pl.errors import DataError, ImageReadError, ImageTooLargeError
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


@pytest.mark.slow  # over ~8 s: the slow tier keeps make test-fast under 3 min
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


# -- bad files of the kinds a PACS export or an attacker produces (issue 23) ----------------------


def cut_in_pixel_length(path: Path, gray: np.ndarray) -> Path:
    """A valid file cut inside the Pixel Data element's 4-byte length field."""
    data = write_dicom(path, gray).read_bytes()
    start = data.index(b"\xe0\x7f\x10\x00")  # (7FE0,0010), then VR "OW", 2 reserved, length
    path.write_bytes(data[: start + 10])
    return path


def rle_declaring(path: Path, gray: np.ndarray, rows: int, columns: int) -> Path:
    """A few-KB RLE file whose header declares ``rows``×``columns`` (its segments hold ``gray``)."""
    write_dicom(path, gray)
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    ds.Rows, ds.Columns = rows, columns
    ds.save_as(path, enforce_file_format=True)
    return path


def two_frames_unannounced(path: Path, gray: np.ndarray) -> Path:
    """Two frames of pixel data and no NumberOfFrames."""
    return write_dicom(path, np.stack([gray, gray]))


def deflated(path: Path, stored: np.ndarray, declare: tuple[int, int] | None = None, **kw) -> Path:
    """``stored`` in the Deflated transfer syntax (the whole dataset zlib-compressed); ``declare``
    puts other Rows/Columns in its header than the pixel data holds."""
    write_dicom(path, stored, **kw)
    ds = pydicom.dcmread(path)
    if declare is not None:
        ds.Rows, ds.Columns = declare
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def deflate_bomb(path: Path) -> Path:
    """64 KB that inflate to 64 MB: 5792×5792 16-bit zeros (33.5 MP, under the shipped limit)."""
    return deflated(path, np.zeros((5792, 5792), np.uint16), bits_stored=12)


def test_a_file_cut_in_the_pixel_data_length_is_named(tmp_path):
    path = cut_in_pixel_length(tmp_path / "cut.dcm", np.zeros((32, 32), np.uint8))
    with pytest.raises(ImageReadError, match=r"cut.dcm: corrupt or truncated DICOM \(unpack"):
        read_gray(path)


def test_a_huge_declared_rle_image_is_refused_before_decoding(tmp_path, caplog):
    """40000×40000 declared in 5 KB: refused from the header, without pydicom allocating the
    1.6 GB its decoder would (tracemalloc sees numpy's and Python's allocations)."""
    import tracemalloc

    path = rle_declaring(tmp_path / "rle.dcm", np.zeros((64, 64), np.uint8), 40_000, 40_000)
    assert path.stat().st_size < 10_000
    tracemalloc.start()
    try:
        with caplog.at_level(logging.DEBUG), pytest.raises(ImageTooLargeError) as error:
            read_gray(path, max_pixels=40_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "rle.dcm: declares 40000×40000 pixels (1,600 MP), more than the 40 MP allowed" in str(
        error.value
    )
    assert peak < 20 * 2**20, peak
    assert not [r for r in caplog.records if r.exc_info]  # nothing decoded, nothing logged


@pytest.mark.slow
def test_a_failing_decoder_logs_no_traceback(tmp_path):
    """pydicom's decoders log every failing plugin with its traceback at ERROR; while the project
    reads a file, that record is kept at DEBUG and the error is said once, by the project."""
    from pydicom.encaps import encapsulate, generate_fragments

    path = rle_declaring(tmp_path / "damaged.dcm", np.full((64, 64), 7, np.uint8), 64, 64)
    ds = pydicom.dcmread(path)
    fragment = next(generate_fragments(ds.PixelData))
    ds.PixelData = encapsulate([fragment[: len(fragment) // 2]])
    ds.save_as(path, enforce_file_format=True)
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
        "from chexnet_pl.data.images import read_gray\n"
        f"try:\n    read_gray({str(path)!r})\n"
        "except Exception as exc:\n    print('ERROR', exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert "ERROR cannot read image" in result.stdout and "damaged.dcm" in result.stdout
    assert "its pixel data cannot be decoded" in result.stdout
    assert "Traceback" not in result.stderr, result.stderr  # pydicom's was printed before


def test_two_frames_without_number_of_frames_are_refused(tmp_path):
    path = two_frames_unannounced(tmp_path / "two.dcm", np.zeros((32, 48), np.uint8))
    with pytest.raises(
        ImageReadError, match=r"two.dcm: its pixel data holds 2 frames of 48×32 .*NumberOfFrames"
    ):
        read_gray(path)


def test_deflated_files_are_read_within_bounds(xrays, tmp_path):
    """A Deflated file reads as the uncompressed one; one inflating beyond what its header
    declares, beyond ``max_inflated_bytes`` or cut short is refused, naming the file."""
    gray = xrays[0][1][::4, ::4].copy()
    plain = write_dicom(tmp_path / "plain.dcm", gray)
    packed = deflated(tmp_path / "deflated.dcm", gray)
    assert packed.stat().st_size < plain.stat().st_size
    np.testing.assert_array_equal(read_gray(packed), read_gray(plain))
    lying = deflated(tmp_path / "lying.dcm", np.zeros((2048, 2048), np.uint16), declare=(64, 64))
    with pytest.raises(ImageReadError, match=r"lying.dcm: its Deflated data inflates to more than"
                       r" the .* KB its header accounts for"):  # fmt: skip
        read_gray(lying)
    bomb = deflate_bomb(tmp_path / "bomb.dcm")
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ImageTooLargeError, match="bomb.dcm: its Deflated data inflates to more"):
        read_dicom(bomb, max_inflated_bytes=50 * 2**20)
    with pytest.raises(ImageTooLargeError, match=r"declares 5792×5792 pixels \(33.5 MP\)"):
        read_dicom(bomb, max_pixels=10_000_000)
    with pytest.raises(ImageReadError, match="cut.dcm: corrupt or truncated DICOM"):
        read_dicom(io.BytesIO(packed.read_bytes()[:-200]), name="cut.dcm")


BAD_FILES = {
    "cut_in_pixel_length": (
        lambda p: cut_in_pixel_length(p, np.zeros((32, 32), np.uint8)),
        "corrupt or truncated DICOM (unpack requires a buffer of 4 bytes)",
    ),
    "rle_40000x40000": (
        lambda p: rle_declaring(p, np.zeros((64, 64), np.uint8), 40_000, 40_000),
        "declares 40000×40000 pixels (1,600 MP), more than the 40 MP allowed (max_pixels=",
    ),
    "two_frames_unannounced": (
        lambda p: two_frames_unannounced(p, np.zeros((32, 32), np.uint8)),
        "its pixel data holds 2 frames of 32×32",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_predict_command_on_a_bad_dicom_is_one_line(case, tmp_path):
    """``chexnet-predict image=<the bad file>`` as a user runs it: exit 2, the file and the reason
    on the error line, no traceback, no predictions written."""
    make, reason = BAD_FILES[case]
    path = make(tmp_path / f"{case}.dcm")
    ckpt = random_checkpoint(tmp_path / "model.ckpt", image_size=32)
    out = tmp_path / "out"
    result = subprocess.run(
        [*console_script("predict"), f"ckpt={ckpt}", f"image={path}", f"out={out}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and f"{case}.dcm: {reason}" in errors[0], output[-3000:]
    assert "Traceback" not in output and "Error executing job" not in output
    assert not (out / "predictions.csv").exists()
