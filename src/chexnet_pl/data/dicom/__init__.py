"""Read a DICOM X-ray as the 8-bit gray image the model takes, the same way for every file.

1. Stored values → modality values: Rescale Slope/Intercept or the Modality LUT (pydicom).
2. Modality values → display values: the VOI LUT if the file has one, else its first window
   (Window Center/Width, with its VOI LUT Function: LINEAR, LINEAR_EXACT or SIGMOID) (pydicom).
3. Display values → 0-255, linearly over the full range step 2 can produce: the VOI LUT's output
   range (0 to 2^bits − 1 of its descriptor), else the range the stored bits can hold passed
   through step 1 (12-bit unsigned: 0-4095 → 0-255). Without a window the image is not stretched
   to its own minimum and maximum, so two files with the same header map the same value to the
   same gray, whatever they show.
4. MONOCHROME1 (white = low values) is inverted, so bone is bright as in NIH's PNGs.

Refused with a message, from the header and before any pixel is decoded: files without pixel
data (reports, presentation states), multi-frame images (by NumberOfFrames, or by uncompressed
pixel data holding several frames), more pixels than ``max_pixels``, colour models other than
RGB/YBR, video transfer syntaxes, and compressed syntaxes whose decoder is not installed (the
message names the packages to install). Damaged files and Deflated datasets that inflate beyond
what they declare are refused while opening (``dicom.file``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import BinaryIO

import numpy as np

from chexnet_pl.data.dicom.file import (
    PIXEL_KEYWORDS,
    header_numbers,
    one_line,
    open_dataset,
    reporting_errors_ourselves,
)
from chexnet_pl.data.image_limits import check_declared_pixels
from chexnet_pl.errors import ImageReadError

log = logging.getLogger(__name__)

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
# pydicom names a decoder's missing plugin; these are the pip packages that provide each.
PLUGIN_PACKAGES = {
    "pylibjpeg": "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle",
    "gdcm": "python-gdcm",
    "pyjpegls": "pyjpegls",
    "pillow": "pillow",
}


def looks_like_dicom(path: str | Path) -> bool:
    """A DICOM file by suffix, or a file with another suffix (often none) and the 'DICM' marker
    after the 128-byte preamble, as PACS exports name them."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def check_dicom_header(path: str | Path) -> str | None:
    """Why the DICOM file ``path`` cannot be used, from its header alone (no pixel is read: see
    the module's list of refusals), or None when it declares one still X-ray image."""
    path = Path(path)
    try:
        with reporting_errors_ourselves():
            _check_single_image(open_dataset(path, path), path, None)
    except ImageReadError as exc:
        return exc.reason
    return None


def _output_range(ds) -> tuple[float, float]:
    """The range of the values after the modality step (what a window maps onto)."""
    if "ModalityLUTSequence" in ds:
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        low, high = 0.0, float(2**bits - 1)
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2 ** int(ds.BitsStored) - 1)
    else:
        low, high = -float(2 ** (int(ds.BitsStored) - 1)), float(2 ** (int(ds.BitsStored) - 1) - 1)
    if "ModalityLUTSequence" not in ds and "RescaleSlope" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.get("RescaleIntercept", 0.0))
        low, high = sorted((low * slope + intercept, high * slope + intercept))
    return low, high


def _voi_lut(values: np.ndarray, ds) -> tuple[np.ndarray, float, float]:
    """The first VOI LUT, looked up here: pydicom 3.0's ``apply_voi`` indexes an 8-bit LUT with
    8-bit indices, so a 4096-entry LUT with 8-bit output wraps at 256 (values beyond the table
    take its last entry, below its first mapped value its first entry, per PS3.3 C.11.2.1.1)."""
    item = ds.VOILUTSequence[0]
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536
    element = item["LUTData"]
    if isinstance(element.value, bytes):  # OW: 16-bit words in the file's byte order
        syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
        little = syntax.is_little_endian if syntax is not None else True
        table = np.frombuffer(element.value, dtype="<u2" if little else ">u2")[:entries]
    else:
        table = np.atleast_1d(np.asarray(element.value, dtype=np.int64))
    index = np.clip(np.floor(values + 0.5).astype(np.int64) - first, 0, len(table) - 1)
    return table[index].astype(np.float64), 0.0, float(2**bits - 1)


def _check_decodable(ds, path: Path) -> None:
    from pydicom.pixels import get_decoder

    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None or not syntax.is_compressed:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise ImageReadError(
            path, f"transfer syntax {syntax.name} ({syntax}) is not a still-image codec; export "
            "the X-ray as an uncompressed or JPEG/JPEG 2000/RLE DICOM",
        ) from exc  # fmt: skip
    if not decoder.is_available:
        needed = [
            PLUGIN_PACKAGES.get(line.split(" - ")[0].strip(), line.split(" - ")[0].strip())
            for line in decoder.missing_dependencies
        ]
        raise ImageReadError(
            path, f"it is compressed as {syntax.name} ({syntax}) and no installed plugin decodes "
            f"that; install one of: {' | '.join(f'pip install {n}' for n in needed)}",
        )  # fmt: skip


def _check_one_frame(ds, path: Path, rows: int, columns: int) -> None:
    """Uncompressed pixel data long enough for two frames or more, in a file that does not say
    it has several (no NumberOfFrames), is a multi-frame image with a wrong header."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is not None and syntax.is_compressed:
        return  # encapsulated: the decoded shape is checked instead
    keyword = next(k for k in PIXEL_KEYWORDS if k in ds)
    bits = {"FloatPixelData": 32, "DoubleFloatPixelData": 64}.get(
        keyword, int(ds.get("BitsAllocated", 8) or 8)
    )
    frame_bytes = math.ceil(rows * columns * int(ds.get("SamplesPerPixel", 1) or 1) * bits / 8)
    element = ds.get_item(keyword)
    length = getattr(element, "length", None)
    if length is None or length == 0xFFFFFFFF:
        length = len(element.value or b"")
    if frame_bytes and length >= 2 * frame_bytes:
        raise ImageReadError(
            path, f"its pixel data holds {length // frame_bytes} frames of {columns}×{rows} "
            f"({length} bytes) but its header declares one (NumberOfFrames "
            f"{ds.get('NumberOfFrames', 'absent')}): export the frame you want as its own file",
        )  # fmt: skip


def read_dicom(
    source: str | Path | BinaryIO,
    name: str = "upload.dcm",
    max_pixels: int | None = None,
    max_inflated_bytes: int | None = None,
) -> np.ndarray:
    """One DICOM file (a path, or an open binary stream called ``name`` in messages) → HxW uint8
    grayscale (see the module's steps); ImageReadError otherwise. More than ``max_pixels``
    declared pixels (rows × columns × frames), or a Deflated dataset inflating beyond
    ``max_inflated_bytes``, is ``ImageTooLargeError``, before any pixel is decoded."""
    stream = source if hasattr(source, "read") else Path(source)
    path = Path(name) if hasattr(source, "read") else Path(source)
    with reporting_errors_ourselves():
        ds = open_dataset(stream, path, max_pixels, max_inflated_bytes)
        photometric = _check_single_image(ds, path, max_pixels)
        try:
            stored = ds.pixel_array
        except Exception as exc:  # pydicom raises many types for broken pixel data
            raise ImageReadError(
                path, f"its pixel data cannot be decoded ({one_line(exc)})"
            ) from exc
    rows, columns, _ = header_numbers(ds)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if stored.shape not in ((rows, columns), (rows, columns, samples)):
        raise ImageReadError(
            path, f"its pixel data decodes to an array of shape {stored.shape}, not the one "
            f"{columns}×{rows} image its header declares",
        )  # fmt: skip
    try:
        return _to_gray(ds, stored, photometric, path)
    except ImageReadError:
        raise
    except Exception as exc:  # a header value pydicom cannot apply (a window, a LUT, the bits)
        raise ImageReadError(
            path, f"its pixel values cannot be mapped to gray with its header ({one_line(exc)})"
        ) from exc


def _check_single_image(ds, path: Path, max_pixels: int | None) -> str:
    """Everything that can be said from the header: one still X-ray image, not larger than
    ``max_pixels``, with a decoder for its transfer syntax. Returns its photometric
    interpretation."""
    if not any(tag in ds for tag in PIXEL_KEYWORDS):
        kind = getattr(ds.get("SOPClassUID"), "name", None) or "unknown SOP class"
        raise ImageReadError(
            path, f"a DICOM without pixel data ({kind}, modality {ds.get('Modality', '?')}): "
            "not an image",
        )  # fmt: skip
    rows, columns, frames = header_numbers(ds)
    check_declared_pixels(path, columns, rows, max_pixels, frames)
    if frames > 1:
        raise ImageReadError(
            path, f"a multi-frame DICOM ({frames} frames); predictions take single X-ray images: "
            "export the frame you want as its own file",
        )  # fmt: skip
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in MONOCHROME + COLOUR:
        raise ImageReadError(
            path, f"photometric interpretation {photometric or 'missing'!r} is not supported "
            f"(use one of {MONOCHROME + ('RGB',)})",
        )  # fmt: skip
    _check_one_frame(ds, path, rows, columns)
    _check_decodable(ds, path)
    return photometric


def _to_gray(ds, stored: np.ndarray, photometric: str, path: Path) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_windowing

    if photometric in COLOUR:  # pydicom returns RGB; luminance as PIL's "L" (ITU-R 601)
        if stored.dtype != np.uint8:
            raise ImageReadError(path, f"{stored.dtype} colour pixels are not supported")
        from PIL import Image

        return np.array(Image.fromarray(stored, mode="RGB").convert("L"), dtype=np.uint8)
    # float64 throughout (exact for 16-bit values and their rescale), without needless copies:
    # a 40 MP image is 320 MB per array.
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    del stored
    low, high = _output_range(ds)
    if "VOILUTSequence" in ds:
        values, low, high = _voi_lut(values, ds)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        values = np.asarray(apply_windowing(values, ds, index=0), dtype=np.float64)
    if not values.flags.writeable:
        values = values.copy()
    values -= low
    values *= 255.0 / max(high - low, 1e-9)
    np.clip(values, 0, 255, out=values)
    values += 0.5
    gray = np.floor(values, out=values).astype(np.uint8)
    del values
    if photometric == "MONOCHROME1":
        gray = 255 - gray
    log.debug(
        "%s: %s, %d-bit stored, range %.1f..%.1f → 0..255", path.name, photometric,
        int(ds.BitsStored), low, high,
    )  # fmt: skip
    return np.ascontiguousarray(gray)
