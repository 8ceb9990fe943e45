"""Uploaded bytes → an 8-bit gray X-ray, or an ``UploadError`` with the HTTP status and a message.

Everything happens in memory. ``decode_image`` recognises the format by its first bytes (not the
file name or the declared content type) and decodes it with the readers ``predict`` uses (PNG
and JPEG by ``data.images.decode_pil``, DICOM of any transfer syntax by ``data.dicom``), so the
same size guard (``max_pixels``, checked on the header before decoding) applies. A Deflated DICOM
may not inflate beyond the upload limit: what would be refused uncompressed is refused deflated.
"""

from __future__ import annotations

import io

import numpy as np

from chexnet_pl.data.dicom import read_dicom
from chexnet_pl.data.images import decode_pil
from chexnet_pl.errors import ChexnetError, ImageReadError, ImageTooLargeError, not_an_image

PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG"}


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


def decode_image(data: bytes, max_pixels: int, max_inflated_bytes: int | None = None) -> np.ndarray:
    """An uploaded file's bytes → H×W uint8 gray (16-bit rescaled, colour and alpha dropped).
    413 for more than ``max_pixels`` declared pixels (or a DICOM inflating beyond
    ``max_inflated_bytes``), 400/415/422 for what is not a usable image."""
    if not data:
        raise UploadError(400, "the upload is empty (0 bytes): send the image file's bytes")
    kind = sniff_format(data)
    if kind is None:
        raise UploadError(415, not_an_image(data))  # predict's words for image= too
    label = "DICOM" if kind == "dicom" else PIL_FORMATS[kind]
    try:
        if kind == "dicom":
            return read_dicom(io.BytesIO(data), "the upload", max_pixels, max_inflated_bytes)
        return decode_pil(io.BytesIO(data), max_pixels, "the upload", [PIL_FORMATS[kind]])
    except ImageTooLargeError as exc:
        raise UploadError(413, f"this {label} {_clause(exc.reason)}; send a smaller image") from exc
    except ImageReadError as exc:
        raise UploadError(422, f"cannot use this {label}: {exc.reason}") from exc


def _clause(reason: str) -> str:
    """``declares ...`` reads after "this PNG"; ``its Deflated data ...`` is said as "has: ..."."""
    return reason if reason.startswith("declares") else f"is refused: {reason}"
