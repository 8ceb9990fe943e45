"""What a data module accepts: every ``data.*`` setting judged once, when it is built.

``check_common_settings`` judges what every dataset shares (``ChestXrayDataModule``'s own
arguments); each dataset's module adds its own (NIH's: ``check_nih_settings``). Nothing here reads
an image: the checks look at values, and at the folder and files the data comes from
(``data.root``, its metadata CSV and split lists), so a wrong path is reported before any weights
are fetched or images read.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from chexnet_pl.data.device_loader import LOADERS
from chexnet_pl.data.nih_table import find_data_entry
from chexnet_pl.data.splits import SPLITS, TEST_LIST, TRAIN_VAL_LIST, SplitSettings
from chexnet_pl.errors import NIH_ROOT_HINT, ConfigError, DataError
from chexnet_pl.validation import Problems

# data.view_position, one vocabulary for every dataset: frontal = PA or AP (NIH has only those).
VIEWS = ("all", "frontal", "lateral", "PA", "AP")
FRONTAL = "Frontal"  # a table column: whether the image is a frontal view
MISSING_POLICIES = ("error", "skip")
CACHE_MODES = ("auto", "off", "required")
ROOT_HINT = NIH_ROOT_HINT  # said before torch is imported too (chexnet_pl.early)


def check_common_settings(settings: Mapping[str, Any], problems: Problems) -> None:
    """Add every unusable value of the settings all datasets share (``ChestXrayDataModule``'s
    arguments) to ``problems`` (prefix ``data``)."""
    for name, allowed in (("missing_images", MISSING_POLICIES), ("on_bad_image", MISSING_POLICIES),
                          ("cache", CACHE_MODES), ("loader", LOADERS)):  # fmt: skip
        problems.choice(name, settings[name], allowed)
    size_ok = problems.number("image_size", settings["image_size"], minimum=1, integer=True)
    problems.number("batch_size", settings["batch_size"], minimum=1, integer=True)
    problems.number("eval_batch_size", settings["eval_batch_size"], minimum=1, integer=True,
                    optional=True)  # fmt: skip
    workers = settings["num_workers"]
    if workers != "auto" and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 0
    ):
        problems.add(f"data.num_workers={workers!r}: give auto or a whole number >= 0")
    for name in ("pin_memory", "check_images", "require_test"):
        problems.flag(name, settings[name])
    share = settings["device_memory_share"]
    if problems.number("device_memory_share", share, minimum=0, maximum=1) and share == 0:
        problems.add("data.device_memory_share=0 is out of range; use a share in (0, 1]")
    decode_check = settings["decode_check"]
    if not isinstance(decode_check, Sequence) or isinstance(decode_check, str):
        problems.add(f"data.decode_check={decode_check!r}: give a list of splits, e.g. [val,test]")
    else:
        for name in decode_check:
            problems.choice("decode_check[]", name, SPLITS)
    problems.number("seed", settings["seed"], integer=True)
    cache_size = settings["cache_size"]
    if problems.number("cache_size", cache_size, minimum=1, integer=True, optional=True):
        if cache_size is not None and size_ok and cache_size < settings["image_size"]:
            problems.add(
                f"data.cache_size={cache_size} is smaller than data.image_size="
                f"{settings['image_size']}: the images would be upsampled. Prepare a cache of at "
                "least that size, or leave data.cache_size unset (null)."
            )
    _check_augment(settings["augment"], problems)


def check_nih_settings(settings: Mapping[str, Any], problems: Problems, source: bool = True
                       ) -> SplitSettings | None:  # fmt: skip
    """Add what is wrong with NIH's own settings (``NIHDataModule``'s arguments) to
    ``problems``; returns the split's settings. ``source``: also check that ``data.root`` (and
    ``data.csv``, the split lists) are there."""
    problems.choice("view_position", settings["view_position"], VIEWS)
    problems.flag("include_no_finding", settings["include_no_finding"])
    _check_synthetic(settings["synthetic"], problems)
    split = _split_settings(settings["split"], problems)
    if source:
        _check_source(settings, split, problems)
    return split


def check_data_settings(settings: Mapping[str, Any], source: bool = True) -> SplitSettings:
    """One ``ConfigError`` naming every unusable value of NIH's data module settings (the shared
    ones and NIH's own); returns the split's settings."""
    problems = Problems("data")
    check_common_settings(settings, problems)
    split = check_nih_settings(settings, problems, source)
    problems.raise_if_any()
    return split


def _split_settings(section: Any, problems: Problems) -> SplitSettings | None:
    from chexnet_pl.validation import settings_from

    if not isinstance(section, Mapping):
        problems.add(f"data.split={section!r}: give method, val_fraction, fractions, file, seed")
        return None
    try:
        return settings_from(SplitSettings, section, "data.split")
    except ConfigError as exc:
        problems.extend(exc)
        return None


def _check_augment(augment: Any, problems: Problems) -> None:
    """``data.augment``: the keyword arguments of ``transforms.train_transform``."""
    from chexnet_pl.data.transforms import train_transform

    nested = _keywords_of(
        train_transform, "image_size", "augment", augment, "hflip, affine, scale, translate, rotate",
        problems,
    )  # fmt: skip
    if nested is None:
        return
    for name in ("hflip", "affine"):
        if name in augment:
            nested.number(name, augment[name], minimum=0, maximum=1)
    if "translate" in augment:
        nested.number("translate", augment["translate"], minimum=0, maximum=1)
    if "rotate" in augment:
        nested.number("rotate", augment["rotate"], minimum=0, maximum=180)
    scale = augment["scale"] if "scale" in augment else [1, 1]
    if not (
        isinstance(scale, Sequence)
        and len(scale) == 2
        and all(isinstance(v, int | float) and v > 0 for v in scale)
        and scale[0] <= scale[1]
    ):
        nested.add(f"data.augment.scale={scale!r}: give [low, high] > 0, e.g. [0.95,1.05]")
    problems.messages.extend(nested.messages)


def _check_synthetic(synthetic: Any, problems: Problems) -> None:
    """``data.synthetic``: null, or the keyword arguments of ``generate_synthetic_nih``."""
    if synthetic is None:
        return
    from chexnet_pl.data.synthetic import generate_synthetic_nih

    nested = _keywords_of(
        generate_synthetic_nih, "root", "synthetic", synthetic, "null or the generator's settings",
        problems,
    )  # fmt: skip
    if nested is not None:
        problems.messages.extend(nested.messages)


def _keywords_of(
    function: Any, given: str, key: str, value: Any, hint: str, problems: Problems
) -> Problems | None:
    """``data.<key>``, the keyword arguments of ``function`` (all but the ``given`` one): the
    Problems to judge their values in (unknown keys already there), or None when ``value`` is
    not a mapping (said in ``problems``, with ``hint``: what to give)."""
    if not isinstance(value, Mapping):
        problems.add(f"data.{key}={value!r}: give {hint}")
        return None
    nested = Problems(f"data.{key}")
    nested.unknown_keys(value, [p for p in inspect.signature(function).parameters if p != given])
    return nested


def _check_source(
    settings: Mapping[str, Any], split: SplitSettings | None, problems: Problems
) -> None:
    """``data.root`` (and ``data.csv``) point at the data; the demo's synthetic data is
    written there later, so it need not exist yet."""
    root = settings["root"]
    if not problems.text("root", root):
        return
    if settings["synthetic"] is not None:
        return
    folder = Path(root).expanduser()
    if not folder.is_dir():
        problems.add(f"data.root={root} is not a folder; give {ROOT_HINT}")
        return
    if settings["csv"]:
        if not Path(settings["csv"]).expanduser().is_file():
            problems.add(f"data.csv={settings['csv']} is not a file; give the metadata CSV")
    else:
        try:
            find_data_entry(folder)
        except DataError as exc:
            problems.add(f"data.root={root}: {exc}")
            return
    if split is not None and split.method == "official":
        absent = [name for name in (TRAIN_VAL_LIST, TEST_LIST) if not (folder / name).is_file()]
        if absent:
            problems.add(
                f"data.root={root} has no {' or '.join(absent)}: data.split.method=official "
                "needs NIH's lists; add them, or use data.split.method=patient"
            )
