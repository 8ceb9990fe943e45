"""Exceptions a user can hit, each with a message that says what was wrong, where, and what to do."""

from __future__ import annotations


class ChexnetError(Exception):
    """Base class of the project's user-facing errors."""


class DataError(ChexnetError, ValueError):
    """A metadata table, split list or image folder is not what the loader needs."""


class ImageReadError(DataError):
    """An image file could not be decoded."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


class ImageTooLargeError(ImageReadError):
    """An image declares more pixels than ``max_pixels`` (or inflates beyond its limit): refused
    before its pixels are decoded (the web service answers 413)."""


class ConfigError(ChexnetError, ValueError):
    """A setting has a value the code cannot use (named with its key, value and what is allowed)."""


class WeightsError(ChexnetError, RuntimeError):
    """Pretrained weights or a checkpoint could not be loaded."""


class TrainingError(ChexnetError, RuntimeError):
    """Training cannot go on (a non-finite loss, an unusable output folder)."""


def shown(value: object) -> str:
    """A value as a message shows it: numbers plain (``1.5``, not ``np.float64(1.5)``), text quoted."""
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", None) == 0:  # a numpy or torch scalar
        value = item()
    return repr(value)
