"""Opening a DICOM file within limits, before any pixel is decoded.

- Any parse error (a file cut inside an element's header, a bad length, a wrong VR) is one
  ``ImageReadError`` naming the file, whatever pydicom raised (``struct.error``, ``EOFError``...).
- A Deflated transfer syntax (the whole dataset zlib-compressed) is inflated here, in two bounded
  steps, instead of by pydicom, which inflates all of it at once: first at most ``HEADER_BYTES``
  (enough for the header up to the pixel data), whose declared size then passes the pixel guard;
  then no more than the pixel data that header declares (and, when given, ``max_inflated_bytes``).
  A 64 KB file that inflates to 64 MB stops after the few megabytes its header accounts for.
- The pixel data of a file on disk is read only when it is decoded, after the size checks.
- While this module reads a file, records that pydicom logs *with a traceback* (its decoders log
  every failing plugin at ERROR) are kept at DEBUG, without it: the caller reports the error as
  one line.
"""

from __future__ import annotations

import logging
import math
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from chexnet_pl.data.image_limits import check_declared_pixels
from chexnet_pl.errors import ChexnetError, ImageReadError, ImageTooLargeError

log = logging.getLogger(__name__)

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
# The inflated header of a Deflated file (everything before its pixel data) may take this much.
HEADER_BYTES = 4 * 2**20
# ...and after its pixel data, this much (trailing padding, signatures).
TRAILER_BYTES = 64 * 2**10
# Values longer than this in a file on disk (the pixel data) are read when used, after the checks.
DEFER_BYTES = 2**20

# Loggers of the DICOM stack that log exceptions with their traceback (pydicom's decoders log
# every failing plugin, pylibjpeg every failing codec); others of theirs are found by prefix.
THIRD_PARTY_LOGGERS = ("pydicom", "pydicom.pixels.decoders.base", "pydicom.pixels.utils",
                       "pylibjpeg", "pylibjpeg.utils")  # fmt: skip
_reading = threading.local()


class _TracebacksWeReport(logging.Filter):
    """On the DICOM stack's loggers: while this module reads a file in this thread, a record with
    a traceback is an error the caller reports itself, so it goes to DEBUG here, without it.
    (A filter on a logger sees only that logger's records, hence one on each.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and getattr(_reading, "depth", 0):
            log.debug("%s (reported as one line by chexnet_pl): %s", record.name,
                      record.getMessage())  # fmt: skip
            return False
        return True


_FILTER = _TracebacksWeReport()


def _filter_third_party_loggers() -> None:
    names = set(THIRD_PARTY_LOGGERS) | {
        name for name in list(logging.root.manager.loggerDict)
        if name.split(".")[0] in ("pydicom", "pylibjpeg")
    }  # fmt: skip
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


@contextmanager
def reporting_errors_ourselves() -> Iterator[None]:
    """Within this block the DICOM stack's logged tracebacks are kept at DEBUG (see the filter)."""
    _filter_third_party_loggers()
    _reading.depth = getattr(_reading, "depth", 0) + 1
    try:
        yield
    finally:
        _reading.depth -= 1


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (pydicom's name each plugin on a line of its own)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def size_text(count: int) -> str:
    """A byte count as people read it: ``70.5 KB``, ``50 MB``."""
    return f"{count / 2**20:.3g} MB" if count >= 2**20 else f"{count / 2**10:.3g} KB"


def _not_meta(tag, vr, length) -> bool:  # noqa: ANN001 (pydicom's stop_when signature)
    return tag >> 16 != 2


def open_dataset(
    source: Path | BinaryIO,
    path: Path,
    max_pixels: int | None = None,
    max_inflated_bytes: int | None = None,
):
    """The parsed dataset of ``source`` (a path, or a seekable binary stream called ``path`` in
    messages); for a file on disk its pixel data is read only when used. ``ImageReadError``
    (``ImageTooLargeError`` for the limits) otherwise."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        stream = source if hasattr(source, "read") else open(source, "rb")  # noqa: SIM115
    except FileNotFoundError as exc:
        raise ImageReadError(path, "file not found") from exc
    except OSError as exc:
        raise ImageReadError(path, f"cannot open it ({exc.strerror or exc})") from exc
    try:
        start = stream.tell()
        deflated = _deflated_meta(stream)
        if deflated is not None:
            return _inflate(stream, path, *deflated, max_pixels, max_inflated_bytes)
        stream.seek(start)
        if stream is source:
            return pydicom.dcmread(stream)
        return pydicom.dcmread(str(source), defer_size=DEFER_BYTES)
    except ChexnetError:
        raise
    except InvalidDicomError as exc:
        raise ImageReadError(path, f"not a DICOM file ({one_line(exc)})") from exc
    except Exception as exc:  # pydicom raises struct.error, EOFError, ValueError, KeyError...
        raise ImageReadError(path, f"corrupt or truncated DICOM ({one_line(exc)})") from exc
    finally:
        if stream is not source:
            stream.close()


def _deflated_meta(stream: BinaryIO):
    """(preamble, file meta) when the file's transfer syntax is Deflated, else None (the stream's
    position is then undefined; a file whose meta cannot be read is left to ``dcmread``)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filereader import read_dataset, read_preamble

    try:
        preamble = read_preamble(stream, False)
        meta = FileMetaDataset(read_dataset(stream, False, True, stop_when=_not_meta))
        syntax = meta.get("TransferSyntaxUID")
        deflated = syntax is not None and syntax.is_deflated
    except Exception:  # dcmread gives the error its own words
        return None
    return (preamble, meta) if deflated else None


def _inflate(
    stream: BinaryIO,
    path: Path,
    preamble: bytes | None,
    meta,
    max_pixels: int | None,
    max_inflated_bytes: int | None,
):
    from pydicom.dataset import FileDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    head = inflater.decompress(stream.read(), HEADER_BYTES)
    reached: list[int] = []

    def at_pixel_data(tag, vr, length) -> bool:  # noqa: ANN001
        if tag in PIXEL_TAGS:
            reached.append(int(tag))
            return True
        return False

    header_stream = DicomBytesIO(head)
    header = read_dataset(header_stream, False, True, stop_when=at_pixel_data)
    if not reached and inflater.unconsumed_tail:
        raise ImageTooLargeError(
            path, f"its Deflated dataset holds more than {size_text(HEADER_BYTES)} before any "
            "pixel data; refused before inflating the rest",
        )  # fmt: skip
    limit = len(head)
    if reached:
        rows, columns, frames = header_numbers(header)
        check_declared_pixels(path, columns, rows, max_pixels, frames)
        bits = {0x7FE00008: 32, 0x7FE00009: 64}.get(reached[0], int(header.get("BitsAllocated", 8)))
        samples = int(header.get("SamplesPerPixel", 1) or 1)
        pixel_bytes = math.ceil(rows * columns * frames * samples * bits / 8)
        limit = header_stream.tell() + 12 + pixel_bytes + TRAILER_BYTES  # 12: the element header
    if max_inflated_bytes is not None and limit > max_inflated_bytes:
        limit = max_inflated_bytes
        over = ImageTooLargeError(
            path, f"its Deflated data inflates to more than {size_text(max_inflated_bytes)}, the "
            "limit for an uncompressed file here",
        )  # fmt: skip
    else:
        over = ImageReadError(
            path, f"its Deflated data inflates to more than the {size_text(limit)} its header "
            "accounts for (a deflate bomb, or a damaged file); refused before inflating the rest",
        )  # fmt: skip
    rest = inflater.decompress(inflater.unconsumed_tail, max(0, limit - len(head)) + 1)
    if not inflater.eof and not inflater.unconsumed_tail:  # output zlib still holds (< 32 KB)
        rest += inflater.flush()
    if len(head) + len(rest) > limit:
        raise over
    if not inflater.eof:
        raise ImageReadError(path, "corrupt or truncated DICOM (its Deflated data ends early)")
    dataset = read_dataset(DicomBytesIO(head + rest), False, True)
    return FileDataset(str(path), dataset, preamble, meta, False, True)


def header_numbers(ds) -> tuple[int, int, int]:
    """(rows, columns, frames) as the header declares them (0 rows/columns when absent)."""
    rows = int(ds.get("Rows", 0) or 0)
    columns = int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return rows, columns, frames
