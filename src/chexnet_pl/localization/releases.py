"""Heat maps against the radiologists' boxes and masks of other releases: VinDr-CXR (each
reader's boxes, and per image and finding the union of its readers' boxes), RSNA Pneumonia (its
boxes) and SIIM-ACR Pneumothorax (its masks, several rows of an image united), in the table
format of NIH's boxes (``localization.summarize``) with a ``reference`` column.

A model's outputs are matched to the dataset's localised findings by the same label map as
external validation (``external.match_model_to_data`` with ``label_map_for``, and a dataset's
``label_from_outputs``: RSNA's Lung Opacity is scored on the element-wise maximum of the
Pneumonia, Consolidation and Infiltration maps, each scaled to [0, 1]).

Two kinds of reference unit:

- a **box** (NIH's, RSNA's, one VinDr reader's; ``reference`` = ``box`` or the reader's
  ``rad_id``): scored as NIH's boxes (``score_box``: the map's thresholded regions' boxes);
- a **region** (VinDr's ``union`` of the readers' boxes of one finding on one image, SIIM's
  ``mask``): scored as a pixel mask (``score_mask``: the thresholded map itself against it).

Both also get ``mask_hit`` (the thresholded map touches the reference) and ``heat_in_mask``
(the share of the map's heat mass inside the reference). Images without a reference for a
finding — its negatives — cannot be scored and are counted (``images_skipped``), not scored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chexnet_pl.errors import DataError
from chexnet_pl.localization import score_box, score_mask

log = logging.getLogger(__name__)

BOX, UNION, MASK = "box", "union", "mask"  # reference names (a VinDr reader's is its rad_id)
SPLITS = ("all", "train", "val", "test")


@dataclass(frozen=True)
class Reference:
    """One thing a heat map is scored against: a box (``boxes`` holds one) or a region (the union
    of ``boxes``, or of the RLE ``masks``), for ``finding`` (the model output or combined label
    whose map is scored) on ``image``."""

    image: str
    patient: str
    finding: str
    label: str  # the data's name of the finding
    reference: str
    boxes: tuple[tuple[float, float, float, float], ...] = ()  # x, y, w, h
    masks: tuple[str, ...] = ()  # Kaggle RLE texts (SIIM)
    region: bool = False


def box_mask(shape: tuple[int, int], boxes: Sequence[Sequence[float]]) -> np.ndarray:
    """The union of boxes (x, y, w, h; pixel edges) as a ``shape`` bool mask: the pixels whose
    centre lies inside one of them."""
    mask = np.zeros(shape, dtype=bool)
    for x, y, w, h in boxes:
        top, bottom = int(np.ceil(y - 0.5)), int(np.ceil(y + h - 0.5))
        left, right = int(np.ceil(x - 0.5)), int(np.ceil(x + w - 0.5))
        mask[max(top, 0) : max(bottom, 0), max(left, 0) : max(right, 0)] = True
    return mask


def heat_in_mask(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """The share of the [0, 1] map's total heat inside ``mask`` (0 for an all-zero map)."""
    total = float(np.asarray(heatmap, dtype=np.float64).sum())
    return float(heatmap[mask].sum()) / total if total > 0 else 0.0


def score_reference(heatmap: np.ndarray, truth: np.ndarray, reference: Reference,
                    threshold: float) -> dict[str, float]:  # fmt: skip
    """One unit's scores: ``score_box`` for a box (plus ``mask_hit``, ``heat_in_mask`` on its
    pixels), ``score_mask`` for a region (``truth``: its mask, of the map's shape)."""
    if reference.region:
        scores = score_mask(heatmap, truth, threshold)
    else:
        scores = score_box(heatmap, reference.boxes[0], threshold)
        scores.pop("predicted_boxes", None)
        scores["mask_hit"] = float((truth & (heatmap >= threshold)).any())
    scores["heat_in_mask"] = heat_in_mask(heatmap, truth)
    return scores


def _check_inside(reference: Reference, shape: tuple[int, int], path: str) -> None:
    height, width = shape
    for x, y, w, h in reference.boxes:
        if x >= width or y >= height or x + w <= 0 or y + h <= 0:
            raise DataError(
                f"{reference.image}: the {reference.label} box (x={x:g}, y={y:g}, w={w:g}, "
                f"h={h:g}; reference {reference.reference}) lies outside the image {path} "
                f"({width}×{height} pixels). Boxes are in the release's full-size images: use "
                "the original files, not resized copies"
            )


def truth_mask(reference: Reference, shape: tuple[int, int], path: str) -> np.ndarray:
    """The reference's pixels in an image of ``shape`` (a box's, the boxes' union, the masks'
    union); a box outside the image or a mask of another size is refused, naming both."""
    from chexnet_pl.data.siim_pneumothorax import MASK_SIZE, rle_decode

    if reference.masks:
        if tuple(shape) != (MASK_SIZE, MASK_SIZE):
            raise DataError(
                f"{reference.image}: its masks are of a {MASK_SIZE}×{MASK_SIZE} image (SIIM-ACR's "
                f"run-length encoding), but {path} is {shape[1]}×{shape[0]}: use the release's "
                "original DICOMs, not resized copies"
            )
        union = np.zeros(shape, dtype=bool)
        for text in reference.masks:
            union |= rle_decode(text, *shape)
        return union
    _check_inside(reference, shape, path)
    return box_mask(shape, reference.boxes)


def require_references(datamodule: Any) -> None:
    """A data module with boxes or masks (VinDr-CXR, RSNA, SIIM-ACR), else a DataError saying
    which ones have them — before any of its tables or images is read."""
    from chexnet_pl.data.rsna_pneumonia import RSNAPneumoniaDataModule
    from chexnet_pl.data.siim_pneumothorax import SIIMPneumothoraxDataModule
    from chexnet_pl.data.vindr_cxr import VinDrCXRDataModule

    kinds = (VinDrCXRDataModule, RSNAPneumoniaDataModule, SIIMPneumothoraxDataModule)
    if not isinstance(datamodule, kinds):
        raise DataError(
            f"{type(datamodule).__name__} has no boxes or masks to score heat maps against: "
            "localize scores NIH's box list (no data=), data=vindr_cxr, data=rsna_pneumonia or "
            "data=siim_pneumothorax"
        )


def references_for(
    datamodule: Any, pairs: Sequence[tuple[str, str]], images: set[str]
) -> list[Reference]:
    """Every reference unit of the data module's boxes or masks on ``images``, for the data's
    labels that ``pairs`` (model output or combined label, data label) score."""
    from chexnet_pl.data.nih_table import IMAGE, PATIENT
    from chexnet_pl.data.rsna_pneumonia import RSNAPneumoniaDataModule
    from chexnet_pl.data.vindr_cxr import (
        BOX as CORNERS,
    )
    from chexnet_pl.data.vindr_cxr import (
        CLASS_NAME,
        IMAGE_ID,
        RAD_ID,
        VinDrCXRDataModule,
    )

    require_references(datamodule)
    finding_of = {label: output for output, label in pairs}
    patient = datamodule.table.set_index(IMAGE)[PATIENT].astype(str).to_dict()
    found: list[Reference] = []
    if isinstance(datamodule, VinDrCXRDataModule):
        boxes = datamodule.boxes
        boxes = boxes[boxes[IMAGE_ID].isin(images) & boxes[CLASS_NAME].isin(finding_of)]
        corners = boxes[list(CORNERS)].to_numpy(np.float64)
        xywh = np.column_stack([corners[:, 0], corners[:, 1], corners[:, 2] - corners[:, 0],
                                corners[:, 3] - corners[:, 1]])  # fmt: skip
        for (image, label), rows in boxes.groupby([IMAGE_ID, CLASS_NAME], sort=False):
            where = [boxes.index.get_loc(i) for i in rows.index]
            common = {"image": image, "patient": patient[image], "finding": finding_of[label],
                      "label": label}  # fmt: skip
            for i, reader in zip(where, rows[RAD_ID], strict=True):
                found.append(Reference(**common, reference=reader, boxes=(tuple(xywh[i]),)))
            found.append(Reference(**common, reference=UNION,
                                   boxes=tuple(tuple(xywh[i]) for i in where), region=True))  # fmt: skip
    elif isinstance(datamodule, RSNAPneumoniaDataModule):
        boxes = datamodule.boxes
        boxes = boxes[boxes[IMAGE].isin(images) & boxes["Finding Label"].isin(finding_of)]
        for row in boxes.itertuples(index=False):
            image, label = row[0], row[1]
            found.append(Reference(image, patient[image], finding_of[label], label, BOX,
                                   boxes=((row.x, row.y, row.w, row.h),)))  # fmt: skip
    else:
        from chexnet_pl.data.siim_pneumothorax import LABEL, RLE

        if LABEL in finding_of:
            masks = datamodule.masks[datamodule.masks[IMAGE].isin(images)]
            for image, rows in masks.groupby(IMAGE, sort=False):
                found.append(Reference(image, patient[image], finding_of[LABEL], LABEL, MASK,
                                       masks=tuple(rows[RLE]), region=True))  # fmt: skip
    return found


def localize_dataset(
    model: Any,
    datamodule: Any,
    settings: Mapping[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score ``model``'s heat maps against the data module's references on ``settings['split']``
    (all: every labelled image): (per-unit rows, the summary table). ``settings``: method,
    threshold, image_size, batch_size, split, label_map, label_map_shared, bootstrap_samples,
    bootstrap_seed, confidence."""
    import torch

    from chexnet_pl.data.images import read_gray
    from chexnet_pl.data.nih_table import IMAGE
    from chexnet_pl.evaluation.external import (
        combined_outputs,
        label_map_for,
        match_model_to_data,
    )
    from chexnet_pl.localization import summarize
    from chexnet_pl.models.input_contract import input_size
    from chexnet_pl.visualization.explain import XRay, model_input
    from chexnet_pl.visualization.figures import upsample
    from chexnet_pl.visualization.heatmaps import heatmaps

    require_references(datamodule)
    datamodule.setup()
    names = list(model.class_names)
    combined = combined_outputs(names, datamodule.pathologies,
                                getattr(datamodule, "label_from_outputs", None))  # fmt: skip
    match = match_model_to_data([*names, *combined], datamodule.pathologies,
                                label_map_for(settings.get("label_map"), datamodule),
                                bool(settings.get("label_map_shared", False)))  # fmt: skip
    table = datamodule.table
    split = settings.get("split") or "all"
    if split != "all":
        table = table[table["split"] == split]
    table = table[table["path"].notna()]
    images = set(table[IMAGE])
    references = references_for(datamodule, match.pairs, images)
    if not references:
        raise DataError(
            f"no box or mask of the findings scored ({match.scored}) on the {len(images)} "
            f"image(s) of split {split}: nothing to localise"
        )
    log.info("%s", match.describe())
    sources = {output: combined.get(output, [output]) for output in {r.finding for r in references}}
    path_of = table.set_index(IMAGE)["path"].to_dict()
    image_size = input_size(model, settings.get("image_size"))
    by_image: dict[str, list[Reference]] = {}
    for reference in references:
        by_image.setdefault(reference.image, []).append(reference)
    order = list(by_image)
    rows = []
    batch = int(settings.get("batch_size", 16))
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        xrays = [XRay(name, read_gray(path_of[name])) for name in chunk]
        needed = sorted({names.index(s) for name in chunk for r in by_image[name]
                         for s in sources[r.finding]})  # fmt: skip
        maps = heatmaps(model, torch.from_numpy(model_input(xrays, image_size)), needed,
                        settings.get("method", "auto")).detach().numpy()  # fmt: skip
        for i, xray in enumerate(xrays):
            shape = xray.gray.shape
            for reference in by_image[xray.name]:
                channels = [needed.index(names.index(s)) for s in sources[reference.finding]]
                heat = upsample(maps[i, channels].max(axis=0), shape)
                truth = truth_mask(reference, shape, str(path_of[xray.name]))
                rows.append({IMAGE: xray.name, "patient": reference.patient,
                             "Finding Label": reference.finding, "label": reference.label,
                             "reference": reference.reference,
                             **score_reference(heat, truth, reference,
                                               float(settings["threshold"]))})  # fmt: skip
    per_unit = pd.DataFrame(rows)
    skipped = {finding: len(images - set(per_unit.loc[per_unit["Finding Label"] == finding, IMAGE]))
               for finding in per_unit["Finding Label"].unique()}  # fmt: skip
    for finding, count in skipped.items():
        log.info("%s: %d of %d image(s) have no reference (negatives) and are not scored",
                 finding, count, len(images))  # fmt: skip
    summary = summarize(
        per_unit,
        samples=int(settings.get("bootstrap_samples", 0)),
        seed=int(settings.get("bootstrap_seed", 0)),
        confidence=float(settings.get("confidence", 0.95)),
        skipped=skipped,
    )
    return per_unit, summary


def nih_patient(image: str) -> str:
    """NIH's patient from an image name (``00000003_001.png`` → ``00000003``)."""
    return Path(str(image)).name.split("_", 1)[0]
