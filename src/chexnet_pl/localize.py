"""Score heat maps against NIH's radiologist boxes (BBox_List_2017.csv): per finding, accuracy
at IoU and IoBB thresholds and the pointing game, beside its chance rate.

  chexnet-localize ckpt=outputs/train/2026-12-01/09-30-00/checkpoints/best.ckpt data.root=/data/nih
  chexnet-localize ckpt=best.ckpt data.root=/data/nih method=gradcam threshold=0.3
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig

from chexnet_pl.command_runner import CONFIG_PATH, log_outputs, run_command, run_or_exit
from chexnet_pl.files import write_csv_atomic
from chexnet_pl.validation import Problems

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalizeSettings:
    """conf/localize.yaml, judged before the checkpoint or any image is read."""

    ckpt: str
    boxes: str | None
    method: str
    threshold: float
    image_size: int | None
    batch_size: int
    data: Mapping[str, Any]

    def __post_init__(self) -> None:
        from chexnet_pl.visualization.heatmaps import METHODS

        problems = Problems()
        problems.path("ckpt", self.ckpt, optional=False)
        problems.path("boxes", self.boxes)
        problems.choice("method", self.method, METHODS)
        problems.number("threshold", self.threshold, minimum=0, maximum=1)
        problems.number("image_size", self.image_size, minimum=1, integer=True, optional=True)
        problems.number("batch_size", self.batch_size, minimum=1, integer=True)
        data = Problems("data")
        data.unknown_keys(self.data, ("root",))
        data.path("root", self.data.get("root"), "folder")
        problems.messages += data.messages
        problems.raise_if_any()


def check_config(cfg: DictConfig) -> LocalizeSettings:
    from chexnet_pl.settings import command_settings

    return command_settings(LocalizeSettings, cfg)


def localize(cfg: DictConfig) -> pd.DataFrame:
    import pandas as pd
    import torch

    from chexnet_pl.checkpoints import load_run
    from chexnet_pl.data.images import find_images, read_gray
    from chexnet_pl.errors import DataError
    from chexnet_pl.evaluation.localization import read_bbox_list, score_box, summarize
    from chexnet_pl.models.contract import input_size
    from chexnet_pl.visualization.explain import XRay, model_input
    from chexnet_pl.visualization.figures import upsample
    from chexnet_pl.visualization.heatmaps import heatmaps

    check_config(cfg)
    run = load_run(cfg.ckpt)
    model = run.model
    given = cfg.data.root or run.data_settings.get("root")
    if not given:  # Path("") is the current folder: never read boxes from wherever this runs
        raise DataError(
            f"give data.root=/path/to/nih (the folder with BBox_List_2017.csv and the images); "
            f"{cfg.ckpt} does not name one"
        )
    root = Path(given).expanduser()
    if not root.is_dir():  # data.root itself is checked first; this is the checkpoint's
        raise DataError(
            f"{cfg.ckpt} was trained on {root}, which is not a folder here; give data.root= "
            "(the NIH folder with BBox_List_2017.csv and the images)"
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
    image_size = input_size(model, cfg.image_size)
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
    write_csv_atomic(per_box, out_dir / "localization_boxes.csv", index=False)
    table = summarize(per_box)
    write_csv_atomic(table, out_dir / "localization.csv")
    log.info("localisation of %d boxes (%s, threshold %.2f):\n%s", len(per_box), cfg.method, cfg.threshold,
             table.to_string(float_format=lambda v: f"{v:.3f}"))  # fmt: skip
    return table


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="localize")
def hydra_main(cfg: DictConfig) -> None:
    run_or_exit(localize, cfg)
    log_outputs(cfg.paths.output_dir, ["localization.csv", "localization_boxes.csv"])


def main() -> None:
    run_command("localize", hydra_main, check=check_config, doc=__doc__)


if __name__ == "__main__":
    main()
