"""Out-of-distribution flag for a checkpoint: fitted at the end of training or for an existing
checkpoint (``fit_checkpoint``), and reported by predict and evaluate. The settings, the fitted
state and its arithmetic are ``chexnet_pl.models.ood`` (imported here, so ``chexnet_pl.ood.X``
names every piece)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from chexnet_pl.errors import ConfigError
from chexnet_pl.models.ood import (  # noqa: F401 (the flag's public names, in one place)
    CHECKPOINT_KEY,
    COVARIANCE,
    FLAG,
    HOW_TO_FIT,
    METHOD,
    SCORE,
    OodSettings,
    OodState,
    fit_for,
    fit_state,
    flag_columns,
    ledoit_wolf,
    loader_features,
    log_flags,
    network_features,
    stored_state,
)

log = logging.getLogger(__name__)


def add_to_checkpoint(path: str | Path, state: OodState, out: str | Path | None = None) -> Path:
    """Write ``state`` into checkpoint ``path`` (its ``"ood"`` key) at ``out`` (default: ``path``
    itself, replaced atomically); returns the file written."""
    from chexnet_pl.checkpoints.file_io import read_checkpoint, write_checkpoint

    stored = read_checkpoint(path)
    stored[CHECKPOINT_KEY] = state.to_checkpoint()
    target = Path(out or path).expanduser()
    write_checkpoint(stored, target)
    return target


def fitted_path(checkpoint: str | Path) -> Path:
    """Where ``fit_checkpoint`` writes by default: ``best.ckpt`` → ``best.ood.ckpt`` beside it."""
    checkpoint = Path(checkpoint).expanduser()
    return checkpoint.with_name(f"{checkpoint.stem}.ood{checkpoint.suffix}")


def fit_checkpoint(
    checkpoint: str | Path,
    out: str | Path | None = None,
    max_images: int = 10000,
    false_alarm_rate: float = 0.05,
    data_overrides: Mapping[str, Any] | None = None,
    report_dir: str | Path | None = None,
    device: str | None = None,
) -> Path:
    """Fit the OOD flag for an existing checkpoint, on the data and split it was trained with
    (``data_overrides``: ``data.*`` to change, e.g. ``{"root": ...}``), and write a NEW checkpoint
    with it: ``out``, default ``<stem>.ood.ckpt`` beside it. An existing ``out`` is refused (never
    overwritten silently); the write is atomic. Returns the file written."""
    from chexnet_pl.checkpoints.runs import datamodule_for, load_run

    checkpoint = Path(checkpoint).expanduser()
    target = Path(out).expanduser() if out else fitted_path(checkpoint)
    if target.resolve() == checkpoint.resolve() or target.exists():
        raise ConfigError(
            f"{target} exists; the OOD flag is written to a new file, never over one: remove it "
            "or give another out="
        )
    settings = OodSettings(max_images=max_images, false_alarm_rate=false_alarm_rate)
    run = load_run(checkpoint, device=device)
    datamodule = datamodule_for(run, dict(data_overrides or {}), report_dir or target.parent)
    state = fit_for(run.model.float(), datamodule, settings)
    add_to_checkpoint(checkpoint, state, target)
    log.info("checkpoint with the OOD flag written to %s (%s unchanged)", target, checkpoint)
    return target


def for_explainer(explainer: Any, checkpoint: str | Path) -> OodState | None:
    """The OOD state ``chexnet-predict`` uses: the export's sidecar on ONNX Runtime (PyTorch is
    not imported there), else the checkpoint's; None (and one info line) when none was fitted."""
    checkpoint = Path(checkpoint).expanduser()
    if hasattr(explainer, "session"):
        from chexnet_pl.visualization.onnx_explainer import find_export

        export, _ = find_export(checkpoint)
        stored, source = (
            (export.card.get(CHECKPOINT_KEY), f"{export.path}.json") if export else (None, "")
        )
        if stored is not None and "features" not in explainer.outputs:
            stored = None
    else:
        from chexnet_pl.checkpoints.file_io import read_checkpoint

        stored, source = read_checkpoint(checkpoint, lazy=True).get(CHECKPOINT_KEY), checkpoint
    if stored is None:
        log.info("%s has no OOD flag (ood_score/in_distribution are empty); fit one with %s",
                 checkpoint.name, HOW_TO_FIT)  # fmt: skip
        return None
    return OodState.from_stored(stored, source)


def explainer_features(explainer: Any, pixels: np.ndarray) -> np.ndarray:
    """Pooled features of a uint8 N×1×H×W batch through ``chexnet-predict``'s explainer."""
    if hasattr(explainer, "session"):
        values = explainer.session.run(
            ["features"], {explainer.input: np.ascontiguousarray(pixels, dtype=np.uint8)}
        )
        return np.asarray(values[0])
    import torch

    return network_features(explainer.model, torch.from_numpy(np.ascontiguousarray(pixels)))


def add_flags(frame: Any, state: OodState | None, explainer: Any, pixels: np.ndarray,
              source: str | Path) -> Any:  # fmt: skip
    """``frame`` (a predictions table, one row per image of ``pixels``) with ``ood_score`` and
    ``in_distribution``; one warning per image flagged. Without a state, ``frame`` as it was
    (predictions.csv keeps its layout; ``for_explainer`` said how to fit one)."""
    if state is None:
        return frame
    columns = flag_columns(state, explainer_features(explainer, pixels), len(frame), source)
    for key, values in columns.items():
        frame[key] = values
    log_flags(frame["Image Index"], columns, state, source)
    return frame


def fit_after_training(best: str | Path, datamodule: Any, settings: OodSettings) -> OodState | None:
    """At the end of training: fit the flag with the best checkpoint's weights and store it in
    that checkpoint (its ``"ood"`` key; the file is replaced atomically). A failure is a warning,
    never the loss of the run."""
    from chexnet_pl.checkpoints.runs import load_run
    from chexnet_pl.errors import ChexnetError

    if not settings.enabled:
        log.info("ood.enabled=false: no OOD flag fitted; fit one later with %s", HOW_TO_FIT)
        return None
    try:
        run = load_run(best)
        state = fit_for(run.model.float(), datamodule, settings)
    except ChexnetError as exc:
        log.warning("no OOD flag fitted (%s); fit one later with %s", exc, HOW_TO_FIT)
        return None
    add_to_checkpoint(best, state)
    log.info("OOD flag stored in %s (key 'ood')", best)
    return state


def report_flag_rates(
    state: OodState | None, network: Any, datamodule: Any, splits: Iterable[str],
    output_dir: str | Path, source: str | Path,
) -> dict[str, float]:  # fmt: skip
    """The share of each split's images flagged out of distribution, logged as a small table and
    written to ``<output_dir>/ood.csv``; returns ``<split>/ood_flag_rate``. Without a state: one
    info line saying how to fit one, and nothing else."""
    import pandas as pd

    from chexnet_pl.files import write_csv_atomic

    if state is None:
        log.info("%s has no OOD flag: no flag rates; fit one with %s", source, HOW_TO_FIT)
        return {}
    rows = []
    for split in dict.fromkeys(splits):
        if len(datamodule.datasets.get(split, ())) == 0:
            continue
        scores = state.scores(loader_features(network, datamodule.eval_dataloader(split)), source)
        flagged = int(np.sum(scores > state.threshold))
        rows.append({"split": split, "images": len(scores), "flagged": flagged,
                     "flag_rate": flagged / len(scores), "threshold": state.threshold,
                     "false_alarm_rate": state.false_alarm_rate})  # fmt: skip
    table = pd.DataFrame(rows)
    write_csv_atomic(table, Path(output_dir) / "ood.csv", index=False)
    log.info(
        "out-of-distribution flag rate per split (threshold chosen for %.3g of validation):\n%s",
        state.false_alarm_rate, table.to_string(index=False),
    )  # fmt: skip
    return {f"{row['split']}/ood_flag_rate": float(row["flag_rate"]) for row in rows}
