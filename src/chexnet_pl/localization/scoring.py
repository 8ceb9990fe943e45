"""A model's heat maps scored against radiologists' boxes, box by box (``chexnet-localize``'s
engine, ``localize_checkpoint``; ``chexnet_pl.localization`` holds the measures and the summary,
``localization.releases`` the other releases' references)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    import torch

log = logging.getLogger(__name__)


def localize_checkpoint(
    checkpoint: str | Path, out_dir: str | Path, settings: Mapping[str, Any]
) -> pd.DataFrame:
    """Score a checkpoint's heat maps against NIH's boxes (``BBox_List_2017.csv`` under
    ``settings["data"]["root"]``, else the root the checkpoint was trained on, or
    ``settings["boxes"]``), or, when ``settings["data"]`` names a dataset (``_target_``: VinDr-CXR,
    RSNA Pneumonia, SIIM-ACR), against its references. Writes ``localization_boxes.csv`` (one row
    per reference) and ``localization.csv`` (the summary) into ``out_dir``; returns the summary.

    ``settings``: ``chexnet-localize``'s (``conf/localize.yaml``): method, threshold, image_size,
    batch_size, boxes, split, label_map, label_map_shared, bootstrap_samples, bootstrap_seed,
    confidence, data."""
    from chexnet_pl.checkpoints.runs import datamodule_for, load_run
    from chexnet_pl.errors import DataError
    from chexnet_pl.localization import read_bbox_list, summarize
    from chexnet_pl.localization.releases import localize_dataset
    from chexnet_pl.models.input_contract import input_size

    run = load_run(checkpoint)
    model = run.model
    out_dir = Path(out_dir)
    data = dict(settings.get("data") or {})
    if data.get("_target_"):  # VinDr-CXR, RSNA, SIIM-ACR: localization/releases.py
        datamodule = datamodule_for(run, data, out_dir)
        per_unit, table = localize_dataset(model, datamodule, settings)
        return _write(per_unit, table, out_dir, settings)
    given = data.get("root") or run.data_settings.get("root")
    if not given:  # Path("") is the current folder: never read boxes from wherever this runs
        raise DataError(
            f"give data.root=/path/to/nih (the folder with BBox_List_2017.csv and the images); "
            f"{checkpoint} does not name one"
        )
    root = Path(given).expanduser()
    if not root.is_dir():  # data.root itself is checked first; this is the checkpoint's
        raise DataError(
            f"{checkpoint} was trained on {root}, which is not a folder here; give data.root= "
            "(the NIH folder with BBox_List_2017.csv and the images)"
        )
    boxes = settings.get("boxes")
    table = read_bbox_list(Path(boxes) if boxes else root / "BBox_List_2017.csv", model.class_names)
    image_size = input_size(model, settings.get("image_size"))
    per_box = score_boxes(
        model, table, root, image_size, settings["method"], float(settings["threshold"]),
        int(settings["batch_size"]),
    )  # fmt: skip
    summary = summarize(per_box, settings["bootstrap_samples"], settings["bootstrap_seed"],
                        settings["confidence"])  # fmt: skip
    return _write(per_box, summary, out_dir, settings)


def _write(
    per_unit: pd.DataFrame, table: pd.DataFrame, out_dir: Path, settings: Mapping[str, Any]
) -> pd.DataFrame:
    from chexnet_pl.files import write_csv_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(per_unit, out_dir / "localization_boxes.csv", index=False)
    write_csv_atomic(table, out_dir / "localization.csv")
    log.info("localisation of %d references (%s, threshold %.2f):\n%s", len(per_unit),
             settings["method"], settings["threshold"],
             table.to_string(float_format=lambda v: f"{v:.3f}"))  # fmt: skip
    return table


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
    from chexnet_pl.localization.releases import (
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
