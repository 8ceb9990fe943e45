"""The mistakes a user makes most, answered before torch is imported (seconds on a small CPU):
a ``data.root`` that is not a folder, a ``ckpt`` that does not exist or is a run folder, an
``image=`` that is not an image. Each is said once, in the words the later checks (and the web
service, for an image) use for the same problem; ``run_command`` stops with status 2.

Only values given on the command line are judged here; the rest is the pre-flight check's
(``chexnet_pl.settings``), which runs after the imports.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chexnet_pl.errors import NIH_ROOT_HINT, not_an_image
from chexnet_pl.validation import Problems

# The commands with a ``ckpt`` (and evaluate's second one), and those with ``data.root``.
CHECKPOINT_KEYS = {
    "evaluate": ("ckpt", "compare_ckpt"),
    "predict": ("ckpt",),
    "serve": ("ckpt",),
    "export": ("ckpt",),
    "visualize": ("ckpt",),
    "localize": ("ckpt",),
}
DATA_ROOT_COMMANDS = ("train", "evaluate")


def data_root_problem(root: str, target: str | None) -> str:
    """What is said of a ``data.root`` that is not a folder (``target``: the data module's
    class path, when known)."""
    hint = NIH_ROOT_HINT if target and target.endswith("NIHDataModule") else "the dataset's folder"
    return f"data.root={root} is not a folder; give {hint}"


def image_problem(key: str, value: str) -> str | None:
    """An ``image=`` file that is not a PNG, JPEG or DICOM (nor another format the image
    library reads), from its first bytes: the service's words, after ``<key>=<value>:``."""
    from chexnet_pl.serving.decode import sniff_format

    path = Path(value).expanduser()
    with path.open("rb") as file:
        head = file.read(132)
    if not head:
        return f"{key}={value}: the file is empty (0 bytes); give the image file"
    if sniff_format(head) is not None:
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return None  # another format PIL reads (predict decodes it)
    except (UnidentifiedImageError, OSError):
        return f"{key}={value}: {not_an_image(head)}"


def _given(args: Sequence[str]) -> dict[str, Any] | None:
    """The command line's ``key=value`` (no sweeps), or None when it cannot be read (Hydra
    says why later)."""
    from hydra.core.override_parser.types import OverrideType

    from chexnet_pl.overrides import _parse

    overrides, problems = _parse(args)
    if problems:
        return None
    return {
        o.key_or_group: o.value()
        for o in overrides
        if not o.is_sweep_override()
        and o.type is not OverrideType.DEL
        and not (isinstance(o.value(), str) and "${" in o.value())  # resolved later
    }


def early_problems(command: str, args: Sequence[str]) -> list[str]:
    """What is wrong with the files and folders the command line names (empty: nothing found)."""
    given = _given(args)
    if given is None:
        return []
    problems = Problems()
    for key in CHECKPOINT_KEYS.get(command, ()):
        value = given.get(key)
        if isinstance(value, str) and value not in ("", "???"):
            problems.path(key, value, optional=False)
    image = given.get("image")
    if command == "predict" and isinstance(image, str) and Path(image).expanduser().is_file():
        found = image_problem("image", image)
        if found:
            problems.add(found)
    root = given.get("data.root")
    if command in DATA_ROOT_COMMANDS and isinstance(root, str) and root not in ("", "???"):
        if not Path(root).expanduser().is_dir():
            found = _root_problem(command, args, root)
            if found:
                problems.add(found)
    return problems.messages


def _root_problem(command: str, args: Sequence[str], root: str) -> str | None:
    """A ``data.root`` that is no folder, unless the recipe generates its data there
    (``data.synthetic``, the demo): the composed config says which."""
    from omegaconf import OmegaConf

    from chexnet_pl.overrides import composed_jobs

    try:
        cfg = next(composed_jobs(command, [a for a in args if not a.startswith("-")]))
    except Exception:  # noqa: BLE001 — Hydra says what is wrong with the command line, later
        return None
    if OmegaConf.select(cfg, "data.synthetic", default=None) is not None:
        return None
    return data_root_problem(root, OmegaConf.select(cfg, "data._target_", default=None))
