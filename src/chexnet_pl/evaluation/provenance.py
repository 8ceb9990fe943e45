"""Where the scored images come from: NIH's official lists (``train_val_list.txt``,
``test_list.txt``), so a report never calls a file of training images a test score.

``evaluate preds=`` scores whatever images a file holds; the split it names (``split=test``)
is only a word until the images are checked against the lists. The report's header says how many
images are in each list; scoring images outside the split it names is warned about and said in
the header; ``official_test_only=true`` keeps the images of ``test_list.txt`` only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from chexnet_pl.data.splits import TEST_LIST, TRAIN_VAL_LIST, read_name_list
from chexnet_pl.errors import DataError

log = logging.getLogger(__name__)

# Which official list holds the images of each split name: NIH's validation images are part of
# its train_val list.
SPLIT_LIST = {"test": TEST_LIST, "val": TRAIN_VAL_LIST, "train": TRAIN_VAL_LIST}


@dataclass(frozen=True)
class ImageSources:
    """How many of the scored images are in each official list (``None``: lists not found)."""

    total: int
    in_list: dict[str, int] | None
    outside_split: int = 0  # images not in the list of the split the report names
    split: str = "test"
    lists_folder: Path | None = None

    @property
    def header(self) -> str:
        """One line for the report."""
        if self.in_list is None:
            return (f"{self.total} images; NIH's official lists were not found beside the "
                    "metadata, so which official split they come from is not known")  # fmt: skip
        parts = [f"{count} in {name}" for name, count in self.in_list.items() if count]
        line = f"{self.total} images: {', '.join(parts) or 'none in either official list'}"
        if self.outside_split:
            line += (f" — {self.outside_split} are NOT in the official {self.split} list "
                     f"({SPLIT_LIST[self.split]}): not a {self.split} score")  # fmt: skip
        return line


def read_official_lists(folder: str | Path | None) -> dict[str, set[str]] | None:
    """``{"test_list.txt": names, "train_val_list.txt": names}`` from ``folder``, or None when
    either list is not there."""
    if folder is None:
        return None
    folder = Path(folder).expanduser()
    paths = {name: folder / name for name in (TEST_LIST, TRAIN_VAL_LIST)}
    if not all(path.is_file() for path in paths.values()):
        return None
    return {name: set(read_name_list(path)) for name, path in paths.items()}


def image_sources(
    images: Sequence[str],
    lists: dict[str, set[str]] | None,
    split: str,
    folder: Path | None = None,
    official: bool = True,
) -> ImageSources:
    """Count ``images`` per official list; warn when some are outside ``split``'s list.
    ``official=False``: the split is not NIH's (a patient or file split): only count them."""
    if lists is None:
        return ImageSources(len(images), None, split=split, lists_folder=folder)
    counts = {name: sum(1 for image in images if image in names) for name, names in lists.items()}
    counts["neither list"] = len(images) - sum(counts.values())
    outside = sum(1 for image in images if image not in lists[SPLIT_LIST[split]])
    if split == "val":  # val is a part of train_val; images of the test list are what matter
        outside = sum(1 for image in images if image in lists[TEST_LIST]) + counts["neither list"]
    if not official:
        return ImageSources(len(images), counts, 0, split, folder)
    sources = ImageSources(len(images), counts, outside, split, folder)
    if outside:
        log.warning(
            "split=%s, but %d of the %d scored images are not in the official %s list (%s): "
            "the report says so, and its numbers are not a %s score%s",
            split, outside, len(images), split, SPLIT_LIST[split], split,
            "; official_test_only=true scores the test list's images only" if split == "test" else "",
        )  # fmt: skip
    return sources


def keep_official_test(
    images: Sequence[str], lists: dict[str, set[str]] | None, where: str
) -> list[bool]:
    """``official_test_only=true``: which images to keep (those of test_list.txt)."""
    if lists is None:
        raise DataError(
            f"official_test_only=true needs NIH's {TEST_LIST} and {TRAIN_VAL_LIST} in {where}; "
            "put them there (they come with the metadata), or drop the option"
        )
    keep = [image in lists[TEST_LIST] for image in images]
    if not any(keep):
        raise DataError(
            f"official_test_only=true: none of the {len(images)} images is in {TEST_LIST}"
        )
    log.info(
        "official_test_only=true: scoring the %d of %d images that are in %s",
        sum(keep), len(images), TEST_LIST,
    )  # fmt: skip
    return keep
