"""Localisation: heat maps scored against radiologists' boxes and masks. This module holds the
measures and NIH's boxes; ``localization.releases`` the references of VinDr-CXR, RSNA and
SIIM-ACR; ``localization.scoring`` the engine of ``chexnet-localize`` (``localize_checkpoint``).

Heat maps against radiologists' boxes (NIH ``BBox_List_2017.csv``), as in Wang et al.,
ChestX-ray8 (2017): heat map → boxes by threshold and connected components, then accuracy at
T(IoU) and T(IoBB), plus the pointing game (is the heat map's maximum inside the box?)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from chexnet_pl.errors import DataError

T_VALUES = (0.1, 0.25, 0.5, 0.75, 0.9)
BOX_SPELLINGS = {"Infiltrate": "Infiltration"}  # the box list's spelling → the labels'


def read_bbox_list(path: str | Path, findings: Sequence[str]) -> pd.DataFrame:
    """``Image Index, Finding Label, x, y, w, h`` (pixels of the original image); findings spelled
    as in the labels (``Infiltrate`` → ``Infiltration``) and each one of ``findings`` (a model's
    outputs: the error names those)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"box list not found: {path}")
    raw = pd.read_csv(path)
    if raw.shape[1] < 6:
        raise DataError(
            f"{path} needs 6 columns (Image Index, Finding Label, Bbox [x,y,w,h]); it has {list(raw.columns)}"
        )
    boxes = raw.iloc[:, :6].copy()
    boxes.columns = ["Image Index", "Finding Label", "x", "y", "w", "h"]
    boxes["Finding Label"] = boxes["Finding Label"].astype(str).str.strip().replace(BOX_SPELLINGS)
    unknown = boxes.index[~boxes["Finding Label"].isin(findings)]
    if len(unknown):
        i = unknown[0]
        raise DataError(
            f"{path}, line {i + 2}: finding {raw.iloc[i, 1]!r} is not an output of the model "
            f"({len(unknown)} box(es) in all); its outputs are {list(findings)}"
        )
    numbers = boxes[["x", "y", "w", "h"]].apply(pd.to_numeric, errors="coerce")
    bad = numbers.isna().any(axis=1) | (numbers["w"] <= 0) | (numbers["h"] <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{path}, line {i + 2}: box {raw.iloc[i, 2:6].tolist()} is not x, y, w, h with w, h > 0"
        )
    boxes[["x", "y", "w", "h"]] = numbers.astype(float)
    return boxes


def heatmap_boxes(heatmap: np.ndarray, threshold: float) -> list[tuple[float, float, float, float]]:
    """Boxes (x, y, w, h) around the connected regions where the [0, 1] map is ≥ threshold."""
    regions, count = ndimage.label(heatmap >= threshold)
    boxes = []
    for rows, cols in ndimage.find_objects(regions)[:count]:
        boxes.append(
            (
                float(cols.start),
                float(rows.start),
                float(cols.stop - cols.start),
                float(rows.stop - rows.start),
            )
        )
    return boxes


def _intersection(a: Sequence[float], b: Sequence[float]) -> float:
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(width, 0.0) * max(height, 0.0)


def iou(predicted: Sequence[float], truth: Sequence[float]) -> float:
    inter = _intersection(predicted, truth)
    return inter / (predicted[2] * predicted[3] + truth[2] * truth[3] - inter)


def iobb(predicted: Sequence[float], truth: Sequence[float]) -> float:
    """Intersection over the *detected* box's area (Wang et al.)."""
    return _intersection(predicted, truth) / (predicted[2] * predicted[3])


def score_box(heatmap: np.ndarray, truth: Sequence[float], threshold: float) -> dict[str, float]:
    """Best IoU and IoBB of the map's boxes with one true box, and the pointing-game hit."""
    predicted = heatmap_boxes(heatmap, threshold)
    # The centre of the maximum's plateau: an upsampled coarse map is flat around its peak, and
    # the first index of that plateau (np.argmax) would sit on its corner.
    rows, cols = np.nonzero(heatmap >= heatmap.max() - 1e-6)
    row, col = float(rows.mean()), float(cols.mean())
    x, y, w, h = truth
    return {
        "iou": max((iou(p, truth) for p in predicted), default=0.0),
        "iobb": max((iobb(p, truth) for p in predicted), default=0.0),
        "pointing_hit": float(x <= col + 0.5 <= x + w and y <= row + 0.5 <= y + h),
        "pointing_chance": min(1.0, w * h / heatmap.size),
        "predicted_boxes": len(predicted),
    }


METRICS = ("iou", "iobb", "pointing_hit", "mask_hit", "heat_in_mask")


def _rates(values: np.ndarray) -> dict[str, np.ndarray]:
    """Per-unit scores (units × metrics, ``METRICS`` order) → the table's rates as per-unit 0/1
    or fractions whose mean is the rate: accuracy at each T(IoU), T(IoBB), pointing, mask hit,
    heat in mask."""
    rates = {f"acc_iou@{t}": (values[:, 0] >= t).astype(float) for t in T_VALUES}
    rates |= {f"acc_iobb@{t}": (values[:, 1] >= t).astype(float) for t in T_VALUES}
    rates |= {"pointing": values[:, 2], "mask_hit": values[:, 3], "heat_in_mask": values[:, 4]}
    return rates


def summarize(
    per_box: pd.DataFrame,
    samples: int = 0,
    seed: int = 0,
    confidence: float = 0.95,
    skipped: dict[str, int] | None = None,
) -> pd.DataFrame:
    """Per finding and reference (and ``All`` findings per reference): how many units were
    scored (``boxes``: boxes, or regions for a union or mask reference), on how many images and
    patients, accuracy at each T(IoU) and T(IoBB), the pointing hit rate and its chance, the
    mask hit rate and heat in mask; with ``samples`` patient-bootstrap resamples (a
    ``patient`` column; default: each image its own), each rate's percentile interval at
    ``confidence`` (``<rate>_low``, ``<rate>_high``). ``skipped``: per finding, the images not
    scored for having no reference (negatives), in ``images_skipped``."""
    from chexnet_pl.evaluation.resampling import PatientResamples, percentile_interval

    per_box = per_box.copy()
    if "reference" not in per_box:
        per_box["reference"] = "box"
    if "patient" not in per_box:
        per_box["patient"] = per_box["Image Index"]
    for column in ("mask_hit", "heat_in_mask"):
        if column not in per_box:
            per_box[column] = np.nan
    resamples = PatientResamples.of(per_box["patient"].to_numpy(), samples, seed)
    blocks = list(resamples.blocks()) if samples > 0 else []
    values = per_box[list(METRICS)].to_numpy(np.float64)
    groups = [((finding, reference), np.flatnonzero(
        ((per_box["Finding Label"] == finding) & (per_box["reference"] == reference)).to_numpy()))
        for finding, reference in per_box[["Finding Label", "reference"]].drop_duplicates()
        .itertuples(index=False)]  # fmt: skip
    groups += [(("All", reference), np.flatnonzero((per_box["reference"] == reference).to_numpy()))
               for reference in pd.unique(per_box["reference"])]  # fmt: skip
    rows, index = [], []
    for (finding, reference), members in groups:
        group = per_box.iloc[members]
        row: dict[str, object] = {"reference": reference, "boxes": len(group),
                                  "images": group["Image Index"].nunique(),
                                  "patients": group["patient"].nunique()}  # fmt: skip
        if skipped is not None:
            row["images_skipped"] = (sum(skipped.values()) if finding == "All"
                                     else skipped.get(finding, np.nan))  # fmt: skip
        rates = _rates(values[members])
        row |= {name: float(np.mean(rate)) for name, rate in rates.items()}
        row["pointing_chance"] = float(group["pointing_chance"].mean())
        if blocks:
            codes = resamples.codes[members]
            draws = np.concatenate([counts[codes] for counts in blocks], axis=1)  # units × B
            weight = draws.sum(axis=0)
            for name, rate in rates.items():
                with np.errstate(invalid="ignore", divide="ignore"):
                    means = (np.nan_to_num(rate) @ draws) / weight
                low, high = percentile_interval(means[:, None], confidence)
                defined = not np.isnan(rate).all()
                row[f"{name}_low"] = float(low[0]) if defined else np.nan
                row[f"{name}_high"] = float(high[0]) if defined else np.nan
        rows.append(row)
        index.append(finding)
    table = pd.DataFrame(rows, index=pd.Index(index, name="finding"))
    order = ["reference", "boxes", "images", "patients",
             *(["images_skipped"] if skipped is not None else []),
             *[f"acc_iou@{t}" for t in T_VALUES], *[f"acc_iobb@{t}" for t in T_VALUES],
             "pointing", "pointing_chance", "mask_hit", "heat_in_mask"]  # fmt: skip
    return table[order + [c for c in table.columns if c not in order]]


def score_mask(heatmap: np.ndarray, truth: np.ndarray, threshold: float) -> dict[str, float]:
    """A [0, 1] heat map against a true mask of the same shape (SIIM-ACR's pneumothorax masks):
    IoU and intersection over the heat map's region (pixels ≥ ``threshold``, the IoBB of masks),
    the pointing-game hit (the centre of the map's maximum inside the mask), the mask hit (any of
    the region inside the mask) and the pointing game's chance rate (the mask's share)."""
    heatmap, truth = np.asarray(heatmap, dtype=np.float64), np.asarray(truth, dtype=bool)
    if heatmap.shape != truth.shape:
        raise DataError(f"a heat map of shape {heatmap.shape} cannot be scored against a mask of "
                        f"shape {truth.shape}: upsample it to the mask's image first")  # fmt: skip
    region = heatmap >= threshold
    inter = float((region & truth).sum())
    union = float((region | truth).sum())
    rows, cols = np.nonzero(heatmap >= heatmap.max() - 1e-6)
    row, col = int(round(float(rows.mean()))), int(round(float(cols.mean())))
    return {
        "iou": inter / union if union else 0.0,
        "iobb": inter / float(region.sum()) if region.any() else 0.0,
        "pointing_hit": float(truth[row, col]),
        "mask_hit": float(inter > 0),
        "pointing_chance": float(truth.mean()),
    }
