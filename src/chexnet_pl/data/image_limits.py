"""The one size guard of every image decoder (PNG and JPEG through PIL, DICOM of any transfer
syntax): a file whose header declares more pixels than ``max_pixels`` is refused before any
buffer for its pixels is allocated, so a few kilobytes cannot make a command or the service
allocate gigabytes (a decompression bomb). ``predict``, ``visualize``, ``prepare`` and ``serve``
take the setting ``max_pixels`` (``conf/decode/default.yaml``); ``None`` leaves only PIL's own
bomb check (179 MP), as for training, which reads the prepared NIH images.
"""

from __future__ import annotations

from pathlib import Path

from chexnet_pl.errors import ConfigError, ImageTooLargeError, shown


def check_max_pixels(value: object) -> int | None:
    """The ``max_pixels`` setting as a positive int (None: no limit of our own), or ConfigError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ConfigError(
            f"max_pixels={shown(value)}: give a whole number of pixels, e.g. 40000000"
        )
    if value < 1:
        raise ConfigError(f"max_pixels={shown(value)}: give a positive number of pixels")
    return int(value)


def declared_size(width: int, height: int, frames: int = 1, samples: int = 1) -> str:
    """``4000×3000`` (``×2 frames``, ``×3 samples`` when more than one) and its megapixels."""
    text = f"{width}×{height}"
    if frames > 1:
        text += f" × {frames} frames"
    if samples > 1:
        text += f" × {samples} samples"
    megapixels = width * height * frames * samples / 1e6
    return (
        f"{text} pixels ({megapixels:.3g} MP)"
        if megapixels < 100
        else f"{text} pixels ({megapixels:,.0f} MP)"
    )


def check_declared_pixels(
    path: str | Path,
    width: int,
    height: int,
    max_pixels: int | None,
    frames: int = 1,
    samples: int = 1,
) -> None:
    """``ImageTooLargeError`` when the header's ``width × height × frames × samples`` is more
    than ``max_pixels``; call it with the header's numbers, before decoding."""
    if max_pixels is not None and width * height * frames * samples > max_pixels:
        raise too_large(path, declared_size(width, height, frames, samples), max_pixels)


def too_large(path: str | Path, declared: str, max_pixels: int | None) -> ImageTooLargeError:
    """The one message of a refusal: what the file declares, and the limit with its setting."""
    limit = f"the {max_pixels / 1e6:g} MP allowed (max_pixels={max_pixels})" if max_pixels else (
        "PIL decodes"
    )  # fmt: skip
    return ImageTooLargeError(
        path, f"declares {declared}, more than {limit}; refused before decoding"
    )
