"""Predict and explain image files with a checkpoint (or its ONNX export beside it): per image its
prediction table and heat-map overlays of its most probable findings, and ``predictions.csv`` for
all of them (``prob_<finding>``, the OOD flags, the conformal decisions), with ``model.json``
saying which model made them. Images that cannot be read are listed in ``skipped.csv`` with the
reason; only when none can is it an error. The engine of ``chexnet-predict``.

Nothing here imports torch unless the model runs on PyTorch (``visualization.model_choice``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from chexnet_pl.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

SKIPPED = "skipped.csv"  # images that could not be read, with the reason
TABLES_SHOWN = 3  # images whose whole table is printed; beyond, one line per image


def predict_images(
    checkpoint: str | Path,
    paths: Sequence[Path],
    out_dir: str | Path,
    *,
    backend: str = "auto",
    method: str = "auto",
    image_size: int | None = None,
    thresholds: str | None = None,
    calibration: str | None = None,
    conformal: str | None = None,
    top_k: int = 1,
    batch_size: int = 16,
    max_pixels: int | None = None,
) -> pd.DataFrame:
    """Write ``predictions.csv`` (Image Index, prob_<Class>...) and, per image, its prediction table
    and overlays of its ``top_k`` most probable findings into ``out_dir``; returns the table.

    Args:
        checkpoint: a ``.ckpt``; with ``backend="auto"`` its ONNX export beside it runs when
            there is one of this very checkpoint.
        paths: the image files (PNG, JPEG or DICOM), e.g. ``visualization.inputs.image_files``.
        out_dir: where the tables, overlays and ``predictions.csv`` are written.
        backend: ``auto`` (the ONNX export when one fits), ``torch`` or ``onnx``.
        method: the heat-map method (``visualization.methods.METHODS``; ``auto``: CAM where the
            backbone allows it, else Grad-CAM).
        image_size: the input size (default: the checkpoint's).
        thresholds: an evaluation's ``aucs.csv`` (default: the one beside the checkpoint or in
            its run folder, else 0.5, warned).
        calibration: an evaluation's ``calibration.json``: calibrated probabilities.
        conformal: an evaluation's ``conformal.json`` (default: the run's, else no decisions).
        top_k: overlays of the k most probable findings per image.
        batch_size: images per forward pass.
        max_pixels: the largest image decoded (None: no limit; the command's default is
            ``conf/decode/default.yaml``'s).

    Raises:
        DataError: none of the images could be read (each with its reason in ``skipped.csv``).
    """
    import pandas as pd

    from chexnet_pl.evaluation.conformal import add_decisions, with_calibration
    from chexnet_pl.evaluation.thresholds import operating_thresholds
    from chexnet_pl.files import write_csv_atomic
    from chexnet_pl.ood import add_flags, for_explainer
    from chexnet_pl.serving.sidecar import conformal_rule
    from chexnet_pl.visualization.explain import explain, model_input
    from chexnet_pl.visualization.inputs import calibration_and_thresholds, read_readable
    from chexnet_pl.visualization.model_choice import open_explainer

    checkpoint, out_dir = Path(checkpoint).expanduser(), Path(out_dir)
    model, image_size, identity = open_explainer(checkpoint, backend, method, image_size)
    log.info("model: %s", identity.line())
    operating = operating_thresholds(checkpoint, thresholds, model.class_names)
    calibration_map, cutoffs = calibration_and_thresholds(calibration, operating, model.class_names)
    decisions = with_calibration(
        conformal_rule(checkpoint, conformal, model.class_names), calibration_map,
        Path(str(calibration)).name,
    )  # fmt: skip
    ood = for_explainer(model, checkpoint)  # None: no flag fitted (one info line says how)
    frames, skipped = [], []
    for start in range(0, len(paths), int(batch_size)):
        xrays, unreadable = read_readable(paths[start : start + int(batch_size)], max_pixels)
        skipped.extend(unreadable)
        if not xrays:
            continue
        frame = explain(
            model,
            xrays,
            image_size,
            out_dir,
            method,
            thresholds=cutoffs,
            top_k=int(top_k),
            calibration=calibration_map,
            thresholds_note=operating.description,
            threshold_notes=operating.notes,
            model_line=identity.line(),
        )
        frames.append(add_flags(frame, ood, model, model_input(xrays, image_size), checkpoint))
    if skipped:
        out_dir.mkdir(parents=True, exist_ok=True)
        listing = pd.DataFrame(skipped, columns=["Image Index", "reason"])
        write_csv_atomic(listing, out_dir / SKIPPED, index=False)
        lines = "".join(f"\n  {name}: {reason}" for name, reason in skipped[:10])
        log.warning("%d of %d image(s) could not be read (all in %s):%s",
                    len(skipped), len(paths), out_dir / SKIPPED, lines)  # fmt: skip
    if not frames:
        raise DataError(
            f"none of the {len(paths)} image(s) could be read (each with its reason in "
            f"{out_dir / SKIPPED}), e.g. {skipped[0][0]}: {skipped[0][1]}"
        )
    table = add_decisions(pd.concat(frames, ignore_index=True), decisions)
    write_csv_atomic(table, out_dir / "predictions.csv", index=False)
    identity.write(out_dir)  # beside predictions.csv: which model made them
    log.info(
        "%d image(s) → %s; model: %s; thresholds: %s\n%s", len(table), out_dir, identity.line(),
        operating.description, summary(table, model.class_names, cutoffs, operating.notes),
    )  # fmt: skip
    return table


def summary(
    table: pd.DataFrame,
    class_names: list[str],
    thresholds: list[float],
    notes: tuple[str, ...] = (),
) -> str:
    """What is printed: each image's prediction table (finding, probability, threshold, above,
    and a note where the threshold is undefined or degenerate), as on the web page; beyond a few
    images, one line each with its findings above threshold, and those without a verdict."""
    from chexnet_pl.visualization.figures import prediction_table, table_text

    columns = [f"prob_{name}" for name in class_names]
    tables = [
        (name, prediction_table(row, class_names, thresholds=thresholds, notes=notes))
        for name, row in zip(table["Image Index"], table[columns].to_numpy(), strict=True)
    ]
    if len(tables) <= TABLES_SHOWN:
        return "\n".join(
            f"{name}\n{table_text(rows).to_string(index=False)}" for name, rows in tables
        )
    lines = []
    for name, rows in tables[:10]:
        above = rows[rows["above_threshold"].fillna(False).astype(bool)]
        found = ", ".join(
            f"{r.finding.replace('_', ' ')} {r.probability:.3f} (threshold {r.threshold:.3f})"
            for r in above.itertuples()
        )
        lines.append(f"{name}: {found or 'no finding above its threshold'}")
    undefined = [
        n.replace("_", " ") for n, t in zip(class_names, thresholds, strict=True) if math.isnan(t)
    ]
    if undefined:
        lines.append(f"no verdict (threshold undefined on validation): {', '.join(undefined)}")
    if len(tables) > 10:
        lines.append(
            f"(first 10 of {len(tables)}; every table in <image>.csv, all in predictions.csv)"
        )
    return "\n".join(lines)
