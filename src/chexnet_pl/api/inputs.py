"""What ``Model.predict``, ``explain`` and ``features`` accept as an image: a file (PNG, JPEG or
DICOM), a folder of them, a numpy array or a PIL image — each turned into the full-resolution
8-bit gray pixels the commands decode (``chexnet_pl.data.images.read_gray``)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from chexnet_pl.data.images import read_gray, to_uint8_gray
from chexnet_pl.errors import DataError
from chexnet_pl.visualization.explain import XRay

ImageLike = Union[str, os.PathLike, np.ndarray, Image.Image]  # noqa: UP007 (a public alias)


def as_xrays(images: ImageLike | Iterable[ImageLike], max_pixels: int | None = None) -> list[XRay]:
    """``images`` (one image, a folder, or a list of them) → ``XRay``s named by their path (as
    given) or ``image <i>`` for arrays and PIL images."""
    if isinstance(images, str | os.PathLike | np.ndarray | Image.Image):
        images = [images]
    xrays = []
    for i, image in enumerate(images):
        if isinstance(image, str | os.PathLike):
            path = Path(image).expanduser()
            if path.is_dir():
                from chexnet_pl.visualization.inputs import image_files

                xrays += [XRay(str(p), read_gray(p, max_pixels)) for p in image_files(None, path)]
                continue
            if not path.is_file():
                raise DataError(f"image not found: {path}")
            xrays.append(XRay(str(image), read_gray(path, max_pixels)))
        else:
            xrays.append(XRay(f"image {i}", gray_pixels(image)))
    if not xrays:
        raise DataError("no images given")
    return xrays


def gray_pixels(image: Any) -> np.ndarray:
    """A PIL image or numpy array → H×W uint8 gray. Arrays: H×W or H×W×{1,3,4}; uint8 as is,
    16-bit rescaled by its range, floats in [0, 1] scaled to 0-255 (as PIL would decode them)."""
    if isinstance(image, Image.Image):
        return to_uint8_gray(image)
    if not isinstance(image, np.ndarray):
        raise DataError(
            f"an image is a file path, a numpy array or a PIL image, not {type(image).__name__}"
        )
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise DataError(
            f"an image array is H×W (gray) or H×W×3/4 (colour), not shape {array.shape}"
        )
    if min(array.shape[:2]) < 1:
        raise DataError(f"an image array of shape {array.shape} has no pixels")
    if array.dtype == np.uint8:
        return array.copy() if array.ndim == 2 else to_uint8_gray(Image.fromarray(array))
    if array.ndim == 2 and array.dtype in (np.uint16, np.int32, np.int64, np.int16):
        if array.min(initial=0) < 0:
            raise DataError("an integer image array has negative values; give 0-65535")
        return to_uint8_gray(Image.fromarray(array.astype(np.int32)))
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise DataError(
                "a float image array must hold finite values in [0, 1] "
                f"(found {np.nanmin(array):.3g} to {np.nanmax(array):.3g}); give uint8 for 0-255"
            )
        scaled = np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return scaled if scaled.ndim == 2 else to_uint8_gray(Image.fromarray(scaled))
    raise DataError(f"an image array of dtype {array.dtype} is not supported; give uint8")
