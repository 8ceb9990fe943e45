"""Heat maps against radiologists' boxes (NIH ``BBox_List_2017.csv``), as in Wang et al.,
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


def summarize(per_box: pd.DataFrame) -> pd.DataFrame:
    """Per finding (and all boxes): accuracy at each T(IoU) and T(IoBB), pointing hit rate and chance."""
    rows = {}
    for finding, group in [*per_box.groupby("Finding Label"), ("All", per_box)]:
        row = {"boxes": len(group)}
        for t in T_VALUES:
            row[f"acc_iou@{t}"] = float((group["iou"] >= t).mean())
        for t in T_VALUES:
            row[f"acc_iobb@{t}"] = float((group["iobb"] >= t).mean())
        row["pointing"] = float(group["pointing_hit"].mean())
        row["pointing_chance"] = float(group["pointing_chance"].mean())
        rows[finding] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "finding"
    return table


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
