"""Score heat maps against NIH's radiologist boxes.

chexnet-localize ckpt=best.ckpt data.root=/data/nih [method=auto] [threshold=0.5]
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pandas as pd
import torch
from omegaconf import DictConfig

from chexnet_pl.checkpoints import load_run
from chexnet_pl.cli import CONFIG_PATH, run_or_exit
from chexnet_pl.data.images import find_images, read_gray
from chexnet_pl.errors import DataError
from chexnet_pl.evaluation.localization import read_bbox_list, score_box, summarize
from chexnet_pl.visualization.explain import XRay, model_input
from chexnet_pl.visualization.figures import upsample
from chexnet_pl.visualization.heatmaps import check_method, heatmaps

log = logging.getLogger(__name__)


def localize(cfg: DictConfig) -> pd.DataFrame:
    check_method(cfg.method)
    run = load_run(cfg.ckpt)
    model = run.model
    given = cfg.data.root or run.data_settings.get("root")
    if not given:  # Path("") is the current folder: never read boxes from wherever this runs
        raise DataError(
            f"give data.root=/path/to/nih (the folder with BBox_List_2017.csv and the images); "
            f"{cfg.ckpt} does not name one"
        )
    root = Path(given).expanduser()
    if not root.is_dir():
        raise DataError(
            f"data.root={root} is not a folder; give the NIH folder with BBox_List_2017.csv and "
            "the images"
        )
    boxes = read_bbox_list(
        Path(cfg.boxes) if cfg.boxes else root / "BBox_List_2017.csv", model.class_names
    )
    on_disk = find_images(root)
    missing = sorted(set(boxes["Image Index"]) - set(on_disk))
    if missing:
        raise DataError(
            f"{len(missing)} image(s) of the box list are not under {root}, e.g. {missing[:3]}"
        )
    image_size = int(cfg.image_size or run.image_size)
    names = list(model.class_names)
    results = []
    images = boxes["Image Index"].unique().tolist()
    for start in range(0, len(images), int(cfg.batch_size)):
        chunk = images[start : start + int(cfg.batch_size)]
        xrays = [XRay(name, read_gray(on_disk[name])) for name in chunk]
        needed = sorted(
            {names.index(f) for f in boxes.loc[boxes["Image Index"].isin(chunk), "Finding Label"]}
        )
        maps = heatmaps(model, torch.from_numpy(model_input(xrays, image_size)), needed, cfg.method)
        for i, xray in enumerate(xrays):
            for _, box in boxes[boxes["Image Index"] == xray.name].iterrows():
                heat = upsample(
                    maps[i, needed.index(names.index(box["Finding Label"]))].numpy(),
                    xray.gray.shape,
                )
                truth = (box["x"], box["y"], box["w"], box["h"])
                results.append({"Image Index": xray.name, "Finding Label": box["Finding Label"],
                                **score_box(heat, truth, float(cfg.threshold))})  # fmt: skip
    per_box = pd.DataFrame(results)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_box.to_csv(out_dir / "localization_boxes.csv", index=False)
    table = summarize(per_box)
    table.to_csv(out_dir / "localization.csv")
    log.info("localisation of %d boxes (%s, threshold %.2f):\n%s", len(per_box), cfg.method, cfg.threshold,
             table.to_string(float_format=lambda v: f"{v:.3f}"))  # fmt: skip
    return table


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="localize")
def main(cfg: DictConfig) -> None:
    run_or_exit(localize, cfg)


if __name__ == "__main__":
    main()
