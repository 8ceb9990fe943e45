"""Explore a finding: ``n`` images of a split that have it (the images, split and labels those
the checkpoint was trained on), each with its heat-map overlay and prediction table, and one line
per image saying whether the model's probability reaches the threshold. The engine of
``chexnet-visualize``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


def explore_finding(
    checkpoint: str | Path,
    label: str,
    out_dir: str | Path,
    *,
    n: int = 8,
    split: str = "test",
    method: str = "auto",
    seed: int = 0,
    thresholds: str | None = None,
    calibration: str | None = None,
    image_size: int | None = None,
    data: Mapping[str, Any] | None = None,
    max_pixels: int | None = None,
) -> pd.DataFrame:
    """Explain up to ``n`` images of ``split`` labelled ``label`` (drawn with ``seed``) into
    ``out_dir``; returns their table (``prob_<finding>`` and the rest ``explain`` writes).

    Args:
        checkpoint: a ``.ckpt``; its data module and split choose the images.
        label: a finding of the model (a space or an underscore: ``Pleural Thickening``).
        out_dir: where the overlays and tables are written (and the data module's reports).
        n: how many images at most.
        split: ``train``, ``val`` or ``test`` of the checkpoint's split.
        method: the heat-map method (``auto``: CAM where the backbone allows it).
        seed: which ``n`` of the split's positives are drawn.
        thresholds: an evaluation's ``aucs.csv`` (default: the run's, else 0.5, warned).
        calibration: an evaluation's ``calibration.json``: calibrated probabilities.
        image_size: the input size (default: the checkpoint's).
        data: ``data.*`` settings replacing the checkpoint's (``root``, ``num_workers``).
        max_pixels: the largest image decoded (None: no limit).

    Raises:
        DataError: ``label`` is not an output of the model, or no image of ``split`` has it.
    """
    import numpy as np

    from chexnet_pl.checkpoints.runs import datamodule_for, load_run
    from chexnet_pl.data.images import read_gray
    from chexnet_pl.errors import DataError
    from chexnet_pl.evaluation.thresholds import operating_thresholds
    from chexnet_pl.label_sets import resolve_label
    from chexnet_pl.model_identity import of_checkpoint
    from chexnet_pl.models.input_contract import input_size
    from chexnet_pl.visualization.explain import XRay, explain
    from chexnet_pl.visualization.inputs import calibration_and_thresholds

    run = load_run(checkpoint)
    model = run.model
    found = resolve_label(str(label), model.class_names)
    if found is None:
        raise DataError(
            f"label={label!r} is not an output of this model; choose one of {model.class_names} "
            "(a space or an underscore: Pleural Thickening = Pleural_Thickening)"
        )
    operating = operating_thresholds(checkpoint, thresholds, model.class_names)
    calibration_map, cutoffs = calibration_and_thresholds(  # checked before any image is read
        calibration, operating, model.class_names
    )
    datamodule = datamodule_for(run, data or {}, out_dir)
    datamodule.setup()
    dataset = datamodule.datasets[split]
    column = model.class_names.index(found)
    positives = np.flatnonzero(dataset.labels[:, column] > 0.5)
    if len(positives) == 0:
        raise DataError(f"no image of the {split} split has {found}")
    rows = np.random.default_rng(seed).permutation(positives)[: int(n)]
    xrays = [
        XRay(
            dataset.table["Image Index"].iloc[i],
            read_gray(dataset.table["path"].iloc[i], max_pixels),
            dataset.labels[i],
        )
        for i in rows
    ]
    out_dir = Path(out_dir)
    explained = explain(
        model, xrays, input_size(model, image_size), out_dir, method, [found],
        cutoffs, calibration=calibration_map, thresholds_note=operating.description,
        threshold_notes=operating.notes, model_line=of_checkpoint(model, checkpoint).line(),
    )  # fmt: skip
    log.info(
        "%d image(s) with %s (of %d in %s) → %s; thresholds: %s\n%s",
        len(xrays), found, len(positives), split, out_dir, operating.description,
        label_table(explained, model.class_names, found, cutoffs, [x.name for x in xrays]),
    )  # fmt: skip
    return explained


def label_table(
    explained: pd.DataFrame,
    class_names: list[str],
    label: str,
    thresholds: list[float],
    names: list[str],
) -> str:
    """One row per image: its probability of ``label``, the threshold, above or not — every image
    has ``label``, so "no" is a miss at that threshold."""
    import pandas as pd

    j = class_names.index(label)
    probabilities = explained[f"prob_{label}"].to_numpy()
    table = pd.DataFrame({
        "image": names,
        f"p({label.replace('_', ' ')})": [f"{p:.3f}" for p in probabilities],
        "threshold": "undefined" if thresholds[j] != thresholds[j] else f"{thresholds[j]:.3f}",
        "above": [
            "undefined (no verdict)" if thresholds[j] != thresholds[j]
            else "yes" if p >= thresholds[j] else "no (missed)"
            for p in probabilities
        ],
    })  # fmt: skip
    return table.to_string(index=False)
