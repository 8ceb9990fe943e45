"""Which model a checkpoint is explained with: the ONNX export beside it when there is one that
fits (ONNX Runtime: PyTorch never imported), else its PyTorch network (``predict``'s
``backend=``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from chexnet_pl.errors import DataError

if TYPE_CHECKING:
    from chexnet_pl.model_identity import ModelIdentity
    from chexnet_pl.visualization.onnx_explainer import OnnxExplainer
    from chexnet_pl.visualization.torch_explainer import TorchExplainer

log = logging.getLogger(__name__)


def open_explainer(
    checkpoint: str | Path,
    backend: str = "auto",
    method: str = "auto",
    image_size: int | None = None,
) -> tuple[OnnxExplainer | TorchExplainer, int, ModelIdentity]:
    """The model to explain with (an ``Explainer``), its input size and its identity
    (``model_identity``), by ``backend``: the ONNX export of the checkpoint beside it when there
    is one that fits (``auto``, ``onnx``), else the PyTorch network (``auto``, ``torch``).
    ``method`` is the heat-map method (an export has CAMs only); ``image_size`` overrides the
    size the model was trained at."""
    from chexnet_pl.model_identity import of_checkpoint, of_parts
    from chexnet_pl.visualization.onnx_explainer import OnnxExplainer, export_command, find_export

    checkpoint = Path(checkpoint)
    if backend != "torch":
        export, why_not = find_export(checkpoint)
        if export is not None and method not in ("auto", "cam"):
            export, why_not = None, f"method={method} needs PyTorch (the export has CAMs only)"
        if export is not None and image_size and int(image_size) != int(export.card["image_size"]):
            export, why_not = (
                None,
                f"{export.path.name} takes {export.card['image_size']} px, not image_size={image_size}",
            )
        if export is not None:
            explainer = OnnxExplainer(export)
            log.info("model: %s on ONNX Runtime (exported from this checkpoint)", export.path)
            identity = of_parts(
                export.card["backbone"], explainer.class_names, explainer.image_size, checkpoint
            )
            return explainer, explainer.image_size, identity
        if backend == "onnx":
            raise DataError(
                f"backend=onnx: {why_not}; export it with: {export_command(checkpoint)}"
            )
        log.info("model: %s on PyTorch (%s; for a start in seconds, once: %s)", checkpoint.name,
                 why_not, export_command(checkpoint))  # fmt: skip
    from chexnet_pl.checkpoints.runs import load_run
    from chexnet_pl.models.input_contract import input_size
    from chexnet_pl.visualization.torch_explainer import TorchExplainer

    run = load_run(checkpoint)
    size = input_size(run.model, image_size)
    return TorchExplainer(run.model, method), size, of_checkpoint(run.model, checkpoint)
