"""Reading an upload in memory, within a size limit, and keeping it only when asked.

Starlette's own form parsing spools files over 1 MB to a temporary file on disk; the service reads
the request body itself instead, so an upload never touches the disk unless ``save_uploads`` is set.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from email.message import Message
from pathlib import Path

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


def _header_params(header: str) -> Message:
    message = Message()
    message["content-type"] = header
    return message


def file_from_body(body: bytes, content_type: str | None) -> bytes:
    """The image bytes of a request: the body itself, or the ``file`` field of a
    ``multipart/form-data`` body (what ``curl -F file=@xray.png`` and HTML forms send)."""
    if not (content_type or "").lower().startswith("multipart/form-data"):
        return body
    boundary = _header_params(content_type).get_param("boundary")
    if not boundary:
        raise UploadError(400, "multipart/form-data without a boundary")
    for part in body.split(b"--" + str(boundary).encode("latin-1"))[1:]:
        if part.startswith(b"--"):
            break
        head, separator, content = part.partition(b"\r\n\r\n")
        if not separator:
            continue
        headers = Message()
        for line in head.decode("latin-1").strip().splitlines():
            name, _, value = line.partition(":")
            headers[name.strip()] = value.strip()
        disposition = _header_params(headers.get("content-disposition", ""))
        if disposition.get_param("name") in ("file", "image") or disposition.get_param("filename"):
            return content.removesuffix(b"\r\n")
    raise UploadError(400, "the multipart upload has no 'file' field: send it as -F file=@xray.png")


def save_upload(folder: Path, data: bytes, image_format: str) -> Path:
    """``<folder>/<UTC time>_<sha256 prefix>.<png|jpg>``, written whole or not at all."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    suffix = {"jpeg": ".jpg"}.get(image_format, f".{image_format}")
    path = folder / f"{stamp}_{hashlib.sha256(data).hexdigest()[:16]}{suffix}"
    write_bytes_atomic(path, data)
    return path
