"""A model's heat maps scored against radiologists' boxes, box by box (``chexnet-localize``'s
engine; ``evaluation.localization`` holds the measures and the summary)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    import torch


def score_boxes(
    model: torch.nn.Module,
    boxes: pd.DataFrame,
    root: str | Path,
    image_size: int,
    method: str = "cam",
    threshold: float = 0.5,
    batch_size: int = 16,
) -> pd.DataFrame:
    """One row per box of ``boxes`` (``read_bbox_list``'s table; its images found under
    ``root``): the image, its patient, the finding, ``reference`` (``box``) and
    ``score_reference``'s measures of the finding's heat map (``method``, cut at ``threshold`` of
    its maximum) at ``image_size`` (``localization.summarize`` makes the table of them)."""
    import pandas as pd
    import torch

    from chexnet_pl.data.images import find_images, read_gray
    from chexnet_pl.errors import DataError
    from chexnet_pl.evaluation.localization_sets import (
        Reference,
        box_mask,
        nih_patient,
        score_reference,
    )
    from chexnet_pl.visualization.explain import XRay, model_input
    from chexnet_pl.visualization.figures import upsample
    from chexnet_pl.visualization.heatmaps import heatmaps

    root = Path(root)
    on_disk = find_images(root)
    missing = sorted(set(boxes["Image Index"]) - set(on_disk))
    if missing:
        raise DataError(
            f"{len(missing)} image(s) of the box list are not under {root}, e.g. {missing[:3]}"
        )
    names = list(model.class_names)
    results = []
    images = boxes["Image Index"].unique().tolist()
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        xrays = [XRay(name, read_gray(on_disk[name])) for name in chunk]
        needed = sorted(
            {names.index(f) for f in boxes.loc[boxes["Image Index"].isin(chunk), "Finding Label"]}
        )
        maps = heatmaps(model, torch.from_numpy(model_input(xrays, image_size)), needed, method)
        for i, xray in enumerate(xrays):
            for _, box in boxes[boxes["Image Index"] == xray.name].iterrows():
                heat = upsample(
                    maps[i, needed.index(names.index(box["Finding Label"]))].numpy(),
                    xray.gray.shape,
                )
                truth = (box["x"], box["y"], box["w"], box["h"])
                unit = Reference(xray.name, nih_patient(xray.name), box["Finding Label"],
                                 box["Finding Label"], "box", boxes=(truth,))  # fmt: skip
                results.append({"Image Index": xray.name, "patient": unit.patient,
                                "Finding Label": box["Finding Label"], "reference": "box",
                                **score_reference(heat, box_mask(heat.shape, [truth]), unit,
                                                  threshold)})  # fmt: skip
    return pd.DataFrame(results)
