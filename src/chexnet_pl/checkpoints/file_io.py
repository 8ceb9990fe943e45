"""Reading and writing checkpoint files: the ground floor every checkpoint reader stands on.

One ``torch.load`` for the whole project (``weights_only=True``: a file needing arbitrary
unpickling is refused), one message for a damaged file, the hyperparameters read without
reading the weights, and atomic writes (a kill during a save never leaves a corrupt file).
This module imports nothing of the project but its errors and file helpers, so the model, the
trainer plugins and the commands can all use it without importing one another.
"""

from __future__ import annotations

import os
import pickle
import textwrap
from pathlib import Path
from typing import Any

import torch

from chexnet_pl.components import check_stored_settings
from chexnet_pl.errors import WeightsError
from chexnet_pl.files import atomic_write

# What to do about a damaged file, by what it is.
COPY_AGAIN = {
    "checkpoint": "copy it again, or use the run's other checkpoint (checkpoints/last.ckpt or "
    "best.ckpt)",
    "weights file": "download or copy it again",
}


def load_file(path: str | Path, *, lazy: bool = False, kind: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, its failures said plainly.

    ``lazy``: memory-map the tensors instead of reading them (for the settings of a large
    file); a file of the old, non-zip format is then read whole."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"{kind} not found: {path}")
    try:
        if lazy:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (truncated zip), EOFError, ...
        raise load_error(path, exc, kind) from exc


def read_checkpoint(path: str | Path, *, lazy: bool = False) -> dict[str, Any]:
    """A checkpoint's dictionary (weights, settings, training state); ``lazy`` as ``load_file``.

    Its settings are data, never code: a checkpoint whose settings name anything but the
    project's own components (``components.check_stored_settings``) is refused here, before any
    reader could import what it names."""
    checkpoint = load_file(path, lazy=lazy)
    if not isinstance(checkpoint, dict):
        raise WeightsError(
            f"{path} is not a checkpoint: it holds a {type(checkpoint).__name__}, not the "
            "dictionary of weights and settings a run saves"
        )
    check_stored_settings(checkpoint, Path(path).expanduser())
    return checkpoint


def read_hparams(path: str | Path) -> dict[str, Any]:
    """The model's hyperparameters of a checkpoint, its weights left unread (memory-mapped)."""
    hparams = read_checkpoint(path, lazy=True).get("hyper_parameters")
    return dict(hparams) if isinstance(hparams, dict) else {}


def load_error(path: str | Path, exc: BaseException, kind: str = "checkpoint") -> WeightsError:
    """What a failed ``torch.load`` of ``path`` means for the user, in one sentence."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in text:
        detail = next((line.strip() for line in text.splitlines() if "Unsupported global" in line),
                      "")  # fmt: skip
        name = detail.split("GLOBAL", 1)[-1].split(" was not", 1)[0].strip() if detail else ""
        return WeightsError(
            f"{path} needs arbitrary unpickling to load ({name or 'a Python object'} is not plain "
            "weights), which is refused: only files loadable with weights_only=True are read, no "
            "arbitrary pickles"
        )
    reason = textwrap.shorten(text.splitlines()[0] if text.strip() else "", 120) or "no data"
    return WeightsError(
        f"{path} is damaged or not a {kind} ({type(exc).__name__}: {reason}). A file cut short "
        f"(a copy or save that did not finish) reads like this: {COPY_AGAIN[kind]}."
    )


def write_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Save to a temporary file beside ``path``, fsync it, then rename it over ``path``: a rename
    within one file system is atomic, so ``path`` is always the previous complete file or the
    new complete one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A full disk is one line naming the folder and about what the file needs (its tensors).
    with (
        atomic_write(path, needed=tensor_bytes(checkpoint)) as partial,
        open(partial, "wb") as stream,
    ):
        torch.save(checkpoint, stream)
        stream.flush()
        os.fsync(stream.fileno())  # on disk before it replaces the previous file


def tensor_bytes(value: Any) -> int:
    """The bytes of the tensors in ``value`` (nested dicts, lists and tuples): about what a
    checkpoint of it takes on disk."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0
