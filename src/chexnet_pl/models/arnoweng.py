"""arnoweng/CheXNet's trained weights (model.pth.tar) as a chexnet_pl checkpoint that every
command reads (14 outputs, this project's class order): ``import_arnoweng`` (the engine of
``chexnet-import-weights``).

arnoweng/CheXNet's ``model.pth.tar`` holds a DataParallel DenseNet-121 with torchvision's old key
names (``module.densenet121.features.denseblock1.denselayer1.norm.1.weight``) and a 14-way
``classifier.0`` in that project's class order. Keys are remapped and every weight must land —
no ``strict=False`` dropping weights silently (which leaves a random network with AUROC ≈ 0.5).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from chexnet_pl.errors import ConfigError, WeightsError

if TYPE_CHECKING:
    import torch

    from chexnet_pl.models.module import CheXNetModule

log = logging.getLogger(__name__)

# arnoweng/CheXNet's output order (that of the original ChestX-ray8 paper's first 8 + 6 more).
ARNOWENG_CLASSES = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)  # fmt: skip
# The imported model's outputs: NIH's findings in alphabetical order, the order NIH's data module
# gives its labels (evaluation matches outputs to labels by name either way).
IMPORTED_CLASSES = sorted(ARNOWENG_CLASSES)


def convert_arnoweng_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Their keys → this project's ``net.*`` keys, classifier rows reordered to ``IMPORTED_CLASSES``."""
    from chexnet_pl.models.weights import remap_legacy_densenet_keys

    converted = {}
    for key, value in remap_legacy_densenet_keys(
        {k.removeprefix("module.").removeprefix("densenet121."): v for k, v in state_dict.items()}
    ).items():
        if key.startswith("features."):
            converted["net.features.body." + key.removeprefix("features.")] = value
        elif key.startswith("classifier."):  # classifier.0.* in their Sequential head
            name = key.split(".")[-1]
            order = [ARNOWENG_CLASSES.index(c) for c in IMPORTED_CLASSES]
            converted[f"net.classifier.{name}"] = value[order]
        else:
            raise WeightsError(f"unexpected key {key!r}: is this arnoweng/CheXNet's DenseNet-121?")
    return converted


def import_arnoweng(source: str | Path, target: str | Path) -> CheXNetModule:
    """Convert arnoweng/CheXNet's ``source`` (model.pth.tar) into the checkpoint ``target``;
    returns the model, every one of its network's weights taken from ``source``."""
    import pytorch_lightning as pl

    from chexnet_pl.checkpoints.file_io import read_checkpoint, write_checkpoint
    from chexnet_pl.config_defaults import shipped
    from chexnet_pl.models.module import CheXNetModule

    if not Path(source).expanduser().is_file():
        raise ConfigError(f"{source} is not a file; give arnoweng/CheXNet's model.pth.tar")
    checkpoint = read_checkpoint(source)
    state_dict = checkpoint.get("state_dict", checkpoint)
    # The shipped optimizer and schedule, should the checkpoint be fine-tuned; the images it was
    # trained on were of the shipped size (224 px crops, as this project's recipe).
    settings = shipped("model", backbone="densenet121", pretrained=False)
    image_size = shipped("data")["image_size"]
    model = CheXNetModule(**settings, class_names=IMPORTED_CLASSES, image_size=image_size)
    converted = convert_arnoweng_state_dict(state_dict)
    # num_batches_tracked counters did not exist before PyTorch 0.4.1 (arnoweng's file predates them).
    own = {
        k
        for k in model.state_dict()
        if k.startswith("net.") and not k.endswith("num_batches_tracked")
    }
    converted = {k: v for k, v in converted.items() if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(own - set(converted)), sorted(set(converted) - own)
    if missing or unexpected:
        raise WeightsError(
            f"{source} does not map onto DenseNet-121: {len(missing)} weight(s) missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    model.load_state_dict(converted, strict=False)  # every net.* key checked above
    target = Path(target)
    write_checkpoint(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": pl.__version__,
            "epoch": 0,
            "global_step": 0,
            "imported_from": str(source),
        },
        target,
    )
    log.info("wrote %s (14 outputs, this project's class order) from %s", target, source)
    return model
