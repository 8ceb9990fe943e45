"""Reading an upload in memory, within a size limit, and keeping it only when asked.

Starlette's own form parsing spools files over 1 MB to a temporary file on disk; the service reads
the request body itself instead and hands it to python-multipart's parser (Starlette's) in memory,
so an upload never touches the disk unless ``save_uploads`` is set.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from chexnet_pl.files import write_bytes_atomic
from chexnet_pl.serving.decode import UploadError

# After the limit is passed the rest of the body is read and dropped (so the client sees the 413
# instead of a reset connection), up to this much more; then the connection is dropped.
DRAIN_BYTES = 64 * 1024 * 1024


async def read_limited(
    chunks: AsyncIterator[bytes], limit: int, declared_length: str | None
) -> bytes:
    """The whole body, or ``UploadError(413)`` when it is longer than ``limit`` bytes."""
    too_large = UploadError(
        413,
        f"the upload is larger than this service's limit of {limit / 2**20:g} MB "
        "(max_upload_mb=); send a smaller image",
    )
    if declared_length is not None and declared_length.isdigit() and int(declared_length) > limit:
        await _drain(chunks)
        raise too_large
    received = bytearray()
    async for chunk in chunks:
        received += chunk
        if len(received) > limit:
            await _drain(chunks)
            raise too_large
    return bytes(received)


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    drained = 0
    async for chunk in chunks:
        drained += len(chunk)
        if drained > DRAIN_BYTES:
            return


def file_from_body(body: bytes, content_type: str | None) -> bytes:
    """The image bytes of a request: the body itself, or the ``file`` field of a
    ``multipart/form-data`` body (what ``curl -F file=@xray.png`` and HTML forms send), parsed
    in memory by python-multipart, FastAPI's own parser."""
    if not (content_type or "").lower().startswith("multipart/form-data"):
        return body
    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        raise UploadError(400, "multipart/form-data without a boundary")
    parts = _Parts()
    try:
        parser = MultipartParser(boundary, parts.callbacks())
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise UploadError(
            400, f"the multipart upload cannot be read ({exc}); send it as -F file=@xray.png"
        ) from exc
    if parts.open:
        raise UploadError(
            400, "the multipart upload is cut short (no closing boundary); send it again"
        )
    for headers, content in parts.done:
        disposition = parse_options_header(headers.get(b"content-disposition", b""))[1]
        if disposition.get(b"name") in (b"file", b"image") or b"filename" in disposition:
            return bytes(content)
    raise UploadError(400, "the multipart upload has no 'file' field: send it as -F file=@xray.png")


class _Parts:
    """What python-multipart's callbacks hand over, collected per part: headers and content."""

    def __init__(self) -> None:
        self.done: list[tuple[dict[bytes, bytes], bytearray]] = []
        self.open = False  # a part begun and not ended
        self.headers: dict[bytes, bytes] = {}
        self.content = bytearray()
        self.field = bytearray()
        self.value = bytearray()

    def callbacks(self) -> dict:
        def add(buffer: bytearray):
            return lambda data, start, end: buffer.extend(data[start:end])

        return {
            "on_part_begin": self._begin,
            "on_header_field": add(self.field),
            "on_header_value": add(self.value),
            "on_header_end": self._header_end,
            "on_part_data": add(self.content),
            "on_part_end": self._end,
        }

    def _begin(self) -> None:
        self.headers, self.content[:], self.open = {}, b"", True

    def _header_end(self) -> None:
        self.headers[bytes(self.field).strip().lower()] = bytes(self.value).strip()
        self.field[:], self.value[:] = b"", b""

    def _end(self) -> None:
        self.done.append((self.headers, bytearray(self.content)))
        self.open = False


def save_upload(folder: Path, data: bytes, image_format: str) -> Path:
    """``<folder>/<UTC time>_<sha256 prefix>.<png|jpg>``, written whole or not at all."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    suffix = {"jpeg": ".jpg"}.get(image_format, f".{image_format}")
    path = folder / f"{stamp}_{hashlib.sha256(data).hexdigest()[:16]}{suffix}"
    write_bytes_atomic(path, data)
    return path
