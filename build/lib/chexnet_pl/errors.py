"""Exceptions a user can hit, each with a message that says what was wrong, where, and what to do."""


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


class WeightsError(ChexnetError, RuntimeError):
    """Pretrained weights or a checkpoint could not be loaded."""


class TrainingError(ChexnetError, RuntimeError):
    """Training cannot go on (a non-finite loss, an unusable output folder)."""
