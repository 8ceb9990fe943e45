"""Uploaded bytes → an 8-bit gray X-ray, or an ``UploadError`` with the HTTP status and a message.

Everything happens in memory. ``decode_image`` is the one place that knows file formats: it
recognises the format by its first bytes (not the file name or the declared content type) and
hands it to that format's decoder in ``DECODERS`` (PNG and JPEG by Pillow, DICOM as ``predict``
reads it).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

from chexnet_pl.data.images import to_uint8_gray
from chexnet_pl.errors import ChexnetError, ImageReadError

# NIH's X-rays are 1024×1024 (1 MP); digital radiographs reach ~4,300×3,500 (15 MP).
DEFAULT_MAX_PIXELS = 40_000_000


class UploadError(ChexnetError, ValueError):
    """An upload the service refuses: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def sniff_format(data: bytes) -> str | None:
    """``png``, ``jpeg``, ``dicom`` or None, from the file's first bytes."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[128:132] == b"DICM":
        return "dicom"
    return None


def _decode_with_pil(data: bytes, pil_format: str, max_pixels: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data), formats=[pil_format]) as image:
            # The header gives the size; check it before decoding (a small file can declare a
            # huge image: a decompression bomb).
            width, height = image.size
            if width * height > max_pixels:
                raise UploadError(
                    413,
                    f"the image declares {width}×{height} pixels ({width * height / 1e6:.0f} MP), "
                    f"more than the {max_pixels / 1e6:.0f} MP this service decodes (max_pixels=); "
                    "send a smaller image",
                )
            if width == 0 or height == 0:
                raise UploadError(422, f"the image has no pixels ({width}×{height})")
            image.load()
            return to_uint8_gray(image)
    except UploadError:
        raise
    except Image.DecompressionBombError as exc:
        raise UploadError(
            413,
            f"the image declares more pixels than this service decodes (over {max_pixels / 1e6:.0f}"
            f" MP, max_pixels=): a decompression bomb? ({exc}); send a smaller image",
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise UploadError(
            422, f"the {pil_format} file is corrupt or truncated ({exc}); send the whole file"
        ) from exc


def _decode_dicom(data: bytes, max_pixels: int) -> np.ndarray:
    """The same DICOM reading as ``predict`` (``data.dicom``), after a header-only size check."""
    import pydicom

    from chexnet_pl.data.dicom import read_dicom

    try:
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        rows, columns = int(header.get("Rows", 0) or 0), int(header.get("Columns", 0) or 0)
    except Exception as exc:  # pydicom raises many types for a broken header
        raise UploadError(
            422, f"the DICOM file is corrupt or truncated ({exc}); send the whole file"
        ) from exc
    if rows * columns > max_pixels:
        raise UploadError(
            413,
            f"the DICOM declares {columns}×{rows} pixels, more than the "
            f"{max_pixels / 1e6:.0f} MP this service decodes (max_pixels=); send a smaller image",
        )
    try:
        return read_dicom(io.BytesIO(data), name="the uploaded DICOM")
    except ImageReadError as exc:
        raise UploadError(422, f"cannot use this DICOM: {exc.reason}") from exc


DECODERS: dict[str, Callable[[bytes, int], np.ndarray]] = {
    "png": lambda data, max_pixels: _decode_with_pil(data, "PNG", max_pixels),
    "jpeg": lambda data, max_pixels: _decode_with_pil(data, "JPEG", max_pixels),
    "dicom": _decode_dicom,
}


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An uploaded file's bytes → H×W uint8 gray (16-bit rescaled, colour and alpha dropped)."""
    if not data:
        raise UploadError(400, "the upload is empty (0 bytes): send the image file's bytes")
    kind = sniff_format(data)
    if kind is None:
        raise UploadError(
            415,
            f"not a PNG, JPEG or DICOM image (it starts with {data[:8]!r}); send a chest X-ray "
            "as PNG, JPEG or DICOM",
        )
    return DECODERS[kind](data, max_pixels)
