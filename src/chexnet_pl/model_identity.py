"""Which model a result comes from, named the same way everywhere: its backbone, the recipe
(``experiment=``) it was trained with, its label set, input size and checkpoint.

``train`` writes it as ``model.json`` in its run folder (and names it in its first and last
lines and in ``run_summary.json``); ``evaluate`` writes it beside ``aucs.csv``; ``predict``, the
overlays and the web page show its one-line form. The CheXNet paper's AUROCs are compared with
only for the paper's model: DenseNet-121 on NIH's 14 findings (``paper_comparison``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MODEL_FILE = "model.json"
PAPER_BACKBONE = "densenet121"


@dataclass(frozen=True)
class ModelIdentity:
    """What names a trained model: backbone, recipe, label set, image size, checkpoint."""

    backbone: str
    recipe: str | None  # experiment=<name>; None: the defaults (the paper's) or not known
    data: str | None  # the data it was trained on (the data= choice); None: not known
    classes: tuple[str, ...]
    image_size: int
    checkpoint: str | None

    @property
    def label_set(self) -> str:
        """``nih: 15 labels``."""
        count = f"{len(self.classes)} labels"
        return f"{self.data}: {count}" if self.data else count

    def line(self, checkpoint: bool = True) -> str:
        """One line: ``densenet121, recipe densenet121, nih: 15 labels, 224 px, checkpoint …``."""
        recipe = f"recipe {self.recipe}" if self.recipe else "recipe: defaults (no experiment=)"
        text = f"{self.backbone}, {recipe}, {self.label_set}, {self.image_size} px"
        return f"{text}, checkpoint {self.checkpoint or 'none yet'}" if checkpoint else text

    def to_json(self) -> dict[str, Any]:
        values = asdict(self)
        values["classes"] = list(self.classes)
        values["label_set"] = self.label_set
        return values

    def write(self, folder: str | Path) -> Path:
        """``<folder>/model.json``."""
        from chexnet_pl.files import write_text_atomic

        path = Path(folder) / MODEL_FILE
        write_text_atomic(path, json.dumps(self.to_json(), indent=1))
        return path


def of_model(
    model: Any,
    checkpoint: str | Path | None = None,
    recipe: str | None = None,
    data: str | None = None,
) -> ModelIdentity:
    """The identity of a ``CheXNetModule`` or ``ChestXrayNet`` (its backbone, classes and
    input size are its own); recipe and label source as known by the caller."""
    from chexnet_pl.models.input_contract import input_size

    classes = tuple(model.class_names)
    return ModelIdentity(
        backbone=str(model.hparams["backbone"]),
        recipe=recipe,
        data=data,
        classes=classes,
        image_size=int(input_size(model)),
        checkpoint=str(checkpoint) if checkpoint else None,
    )


def of_checkpoint(model: Any, checkpoint: str | Path) -> ModelIdentity:
    """A loaded checkpoint's identity: the recipe and label source come from its run folder's
    ``model.json`` (``<run>/checkpoints/best.ckpt`` → ``<run>/model.json``) when it has one."""
    from chexnet_pl.models.input_contract import input_size

    return of_parts(model.hparams["backbone"], model.class_names, input_size(model), checkpoint)


def of_parts(
    backbone: str, classes: Sequence[str], image_size: int, checkpoint: str | Path
) -> ModelIdentity:
    """``of_checkpoint`` from its parts (an exported model's card: no network loaded)."""
    checkpoint = Path(checkpoint).expanduser()
    recorded: dict[str, Any] = {}
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        path = folder / MODEL_FILE
        if path.is_file():
            try:
                recorded = json.loads(path.read_text())
            except (OSError, ValueError):
                recorded = {}
            break
    return ModelIdentity(
        str(backbone), recorded.get("recipe"), recorded.get("data"), tuple(classes),
        int(image_size), str(checkpoint),
    )  # fmt: skip


def training_recipe() -> str | None:
    """The ``experiment=`` of the Hydra run in progress (None: none chosen, or no Hydra run)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get("experiment")


def data_source() -> str | None:
    """The ``data=`` choice of the Hydra run in progress (None: no Hydra run)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get("data")


def paper_comparison(
    backbone: str | None, reference: tuple[Mapping[str, float], float]
) -> str | None:
    """Why the CheXNet paper's AUROCs are not comparable with this model's (None: they are:
    DenseNet-121 scored on all of NIH's 14 findings). ``reference``: the paper's values by the
    model's outputs and their mean, NaN unless every one of its findings is scored
    (``evaluation.external.reference_for``). ``backbone`` None: not known (a predictions file)."""
    if backbone is not None and backbone != PAPER_BACKBONE:
        return (
            f"no paper_auroc/diff_vs_paper columns: the CheXNet paper's AUROCs are DenseNet-121's, "
            f"this model is {backbone}"
        )
    values, mean = reference
    if math.isnan(mean):
        return (
            "no paper_auroc/diff_vs_paper columns: the CheXNet paper's AUROCs are on NIH's 14 "
            f"findings, this model is scored on {len(values)} of them"
        )
    return None
