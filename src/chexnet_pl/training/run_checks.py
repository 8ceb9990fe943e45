"""Checks a run makes before training, so that a mistake stops it in seconds, not hours."""

from __future__ import annotations

import shutil
from pathlib import Path

from chexnet_pl.checkpoints.file_io import read_hparams
from chexnet_pl.errors import DataError, ImageReadError, TrainingError, WeightsError
from chexnet_pl.files import unwritable_reason


def check_output_dir(output_dir: Path, min_free_gb: float) -> None:
    """Fail before training, not at the first checkpoint, when outputs cannot be written."""
    reason = unwritable_reason(output_dir)
    if reason is not None:
        raise TrainingError(
            f"cannot write to the output folder {output_dir}: {reason}. "
            "Choose another with hydra.run.dir=... (or paths.output_dir=...)"
        )
    free_gb = shutil.disk_usage(output_dir).free / 1e9
    if free_gb < min_free_gb:
        raise TrainingError(
            f"only {free_gb:.2f} GB free where the run writes ({output_dir}); checkpoints need more "
            f"(paths.min_free_gb={min_free_gb}). Free space or choose another folder with hydra.run.dir=..."
        )


def check_resumable(model, ckpt_path: str) -> None:
    """A checkpoint of another backbone or class count gets a plain message, not a key dump."""
    stored = read_hparams(ckpt_path)
    for key in ("backbone", "include_no_finding", "class_names"):
        if key in stored and stored[key] != model.hparams[key]:
            raise WeightsError(
                f"cannot resume from {ckpt_path}: it has {key}={stored[key]!r}, this run has "
                f"{key}={model.hparams[key]!r}. Resume with the settings of that run, or start from its "
                "weights with init_from= instead."
            )


def unwrap_worker_error(exc: Exception, on_bad_image: str = "error") -> Exception:
    """A DataLoader worker's ImageReadError reaches here as a RuntimeError holding its traceback
    as text; give the user the error itself, not the worker's stack, and advice that fits."""
    text = str(exc)
    if isinstance(exc, ImageReadError):
        reason = text
    elif "Caught ImageReadError" in text:
        line = next(
            (x for x in reversed(text.splitlines()) if "ImageReadError: " in x),
            text.splitlines()[0],
        )
        reason = line.split("ImageReadError: ", 1)[-1]
    else:
        return exc
    if on_bad_image == "skip":
        advice = (
            "data.on_bad_image=skip replaces such images only in the training split (skipping one "
            "would change what validation and test measure); the val and test images of "
            "data.decode_check were decoded before training, so this file changed since or its "
            "split is not in data.decode_check. Replace the file, or add its split to "
            "data.decode_check so such files are left out before training."
        )
    else:
        advice = "Replace the file, or set data.on_bad_image=skip to leave such images out."
    return DataError(f"{reason}. {advice}")
