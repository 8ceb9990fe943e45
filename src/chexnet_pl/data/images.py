"""Find images on disk (NIH's two download layouts by file name; any other dataset's folder tree by
relative path) and decode them as 8-bit grayscale (PNG/JPEG through PIL, DICOM through
``chexnet_pl.data.dicom``)."""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from chexnet_pl.data.dicom import DICOM_SUFFIXES, looks_like_dicom, read_dicom
from chexnet_pl.data.image_limits import check_declared_pixels, too_large
from chexnet_pl.errors import DataError, ImageReadError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# PIL warns above 89 MP on its own, before ``check_declared_pixels`` refuses such an image with a
# message of ours; above 179 MP it refuses it itself (DecompressionBombError, handled below).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _scan(folder: Path, found: dict[str, Path]) -> None:
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.lower().endswith(IMAGE_SUFFIXES) and entry.is_file():
                if entry.name in found:
                    raise DataError(
                        f"image {entry.name} is in two places: {found[entry.name]} and {entry.path}. "
                        "Remove one copy."
                    )
                found[entry.name] = Path(entry.path)


def find_images(root: str | Path) -> dict[str, Path]:
    """Map image file name → path for ``root/images/*.png`` and ``root/images_NNN/images/*.png``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"data root {root} is not a folder. Point data.root (root= for prepare) at the NIH download folder."
        )
    found: dict[str, Path] = {}
    folders = []
    if (root / "images").is_dir():
        folders.append(root / "images")
    for part in sorted(root.glob("images_*")):
        if (part / "images").is_dir():
            folders.append(part / "images")
        elif part.is_dir():
            folders.append(part)
    for folder in folders:
        _scan(folder, found)
    log.info("found %d images in %d folder(s) under %s", len(found), len(folders), root)
    return found


def is_nih_layout(root: str | Path) -> bool:
    root = Path(root)
    return (root / "images").is_dir() or any(p.is_dir() for p in root.glob("images_*"))


def scan_tree(root: str | Path, skip: tuple[str, ...] = ("prepared",)) -> dict[str, Path]:
    """Map path relative to ``root`` (``/``-separated) → path for every PNG/JPEG/DICOM below
    ``root`` (CheXpert's ``<release>/train/patient*/study*/view*.jpg``, MIMIC-CXR-JPG's
    ``files/p*/...``, PadChest's ``<ImageDir>/<ImageID>``, VinBigData's ``train/<id>.dicom``);
    hidden folders and ``skip`` (the image cache) are not entered."""
    root = Path(root)
    found: dict[str, Path] = {}
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d not in skip)
        relative = os.path.relpath(folder, root)
        for name in files:
            if name.lower().endswith(IMAGE_SUFFIXES + DICOM_SUFFIXES):
                key = name if relative == "." else f"{relative}/{name}".replace(os.sep, "/")
                found[key] = Path(folder) / name
    log.info("found %d images below %s", len(found), root)
    return found


def list_images(root: str | Path) -> dict[str, Path]:
    """Every image ``chexnet-prepare root=<root>`` caches, by the name the data modules look up:
    NIH's layout (``images/``, ``images_NNN/``) by file name, any other by relative path."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data root {root} is not a folder. Point root= at the dataset's folder.")
    return find_images(root) if is_nih_layout(root) else scan_tree(root)


def to_uint8_gray(image: Image.Image) -> np.ndarray:
    """Any PIL mode → HxW uint8: 16-bit is rescaled by its range, colour and alpha are dropped."""
    mode = image.mode
    if mode == "L":
        return np.array(image, dtype=np.uint8)  # a writable copy: torch refuses read-only arrays
    if mode.startswith("I"):
        values = np.asarray(image).astype(np.float32)
        peak = values.max(initial=0)
        # Scale by the range the data uses: 12-bit values in a 16-bit file would come out black.
        full_scale = 255.0 if peak <= 255 else 4095.0 if peak <= 4095 else 65535.0
        return np.clip(values * (255.0 / full_scale) + 0.5, 0, 255).astype(np.uint8)
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        lo, hi = float(values.min(initial=0)), float(values.max(initial=1))
        return np.clip((values - lo) * (255.0 / max(hi - lo, 1e-6)) + 0.5, 0, 255).astype(np.uint8)
    if mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGB" if mode != "LA" else "L")
    return np.asarray(image.convert("L"), dtype=np.uint8)


def decode_pil(
    source: str | Path | BinaryIO,
    max_pixels: int | None = None,
    name: str | Path | None = None,
    formats: list[str] | None = None,
) -> np.ndarray:
    """A PNG/JPEG (any format PIL reads, or only ``formats``) → HxW uint8 gray, its declared size
    checked against ``max_pixels`` before decoding; ImageReadError names ``name`` (default: the
    path) and the reason."""
    path = Path(name if name is not None else source)  # type: ignore[arg-type]
    try:
        with Image.open(source, formats=formats) as image:
            width, height = image.size
            check_declared_pixels(path, width, height, max_pixels)
            if width == 0 or height == 0:
                raise ImageReadError(path, f"the image has no pixels ({width}×{height})")
            image.load()
            return to_uint8_gray(image)
    except ImageReadError:
        raise
    except FileNotFoundError as exc:
        raise ImageReadError(path, "file not found") from exc
    except Image.DecompressionBombError as exc:  # PIL's own net (179 MP), before ours sees the size
        count = re.search(r"\((\d+) pixels\)", str(exc))
        declared = (
            f"{int(count[1]):,} pixels ({int(count[1]) / 1e6:,.0f} MP)" if count else str(exc)
        )
        raise too_large(path, declared, max_pixels) from exc
    except UnidentifiedImageError as exc:
        empty = (
            isinstance(source, str | Path)
            and Path(source).exists()
            and not Path(source).stat().st_size
        )
        reason = "empty file (0 bytes)" if empty else "not an image PIL can identify"
        raise ImageReadError(path, reason) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(path, f"corrupt or truncated ({exc})") from exc


def read_gray(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Decode one image file as HxW uint8 grayscale; ImageReadError names the file and reason.
    A file declaring more than ``max_pixels`` pixels is refused before decoding
    (``ImageTooLargeError``)."""
    path = Path(path)
    # Only files that are not PNG/JPEG by name are sniffed, so dataset reads cost nothing more.
    if path.suffix.lower() not in IMAGE_SUFFIXES and looks_like_dicom(path):
        return read_dicom(path, max_pixels=max_pixels)
    return decode_pil(path, max_pixels)
