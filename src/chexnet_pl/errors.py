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
    """Settings the code cannot use, each named with its key, value and what is allowed.

    ``ConfigError(problem, ...)``: one problem reads as one line; several as a count and one
    line each, so a check that finds every problem reports them in one go (``problems``).
    """

    def __init__(self, *problems: str) -> None:
        self.problems = [str(p) for p in problems]
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            lines = "".join(f"\n  - {p}" for p in self.problems)
            message = f"{len(self.problems)} settings cannot be used:{lines}"
        super().__init__(message)


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


class ServingError(ChexnetError, ValueError):
    """A model cannot be exported or served as asked (backbone, option, file)."""


class DiskFullError(ChexnetError, OSError):
    """A write found its disk full (ENOSPC, or a quota): one line naming the folder, what was
    being written and the space it needed as far as known; the partial file is removed."""


# Words said in two places: before torch is imported (chexnet_pl.early) and by the component
# that owns the setting (the data module, the web service), so both say the same.
NIH_ROOT_HINT = "the NIH download folder (Data_Entry_2017*.csv, train_val_list.txt, images/)"
IMAGE_KINDS = "PNG, JPEG or DICOM"


def not_an_image(data: bytes) -> str:
    """What the web service answers (415) for bytes that are no X-ray, and predict says of a
    file."""
    return (
        f"not a {IMAGE_KINDS} image (it starts with {data[:8]!r}); send a chest X-ray as "
        f"{IMAGE_KINDS}"
    )
