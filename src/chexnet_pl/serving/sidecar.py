"""What travels with a served or exported model: class order, image size, preprocessing, the
operating thresholds of its evaluation and the checkpoint's SHA-256 (the export's JSON sidecar and
the web service's ``GET /model``)."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from chexnet_pl.errors import ServingError
from chexnet_pl.evaluation.conformal import ConformalState, find_conformal
from chexnet_pl.evaluation.thresholds import (
    DEFAULT_THRESHOLD,
    OperatingThresholds,
    operating_thresholds,
)
from chexnet_pl.files import file_sha256
from chexnet_pl.model_identity import ModelIdentity

log = logging.getLogger(__name__)


def find_thresholds(
    checkpoint: str | Path, aucs_csv: str | Path | None, class_names: list[str]
) -> tuple[list[float], str | None]:
    """Per-class operating thresholds and the file they came from (None: 0.5 for every class),
    by the one rule of every command (``evaluation.thresholds.operating_thresholds``)."""
    thresholds = operating_thresholds(checkpoint, aucs_csv, class_names)
    return list(thresholds.values), str(thresholds.source) if thresholds.source else None


def threshold_fields(
    operating: OperatingThresholds, class_names: list[str], values: list[float] | None = None
) -> dict[str, Any]:
    """What a card says of its thresholds: each value (null: undefined, no verdict), each
    class's note (why undefined, or flagged degenerate) and how they were chosen."""
    values = list(operating.values) if values is None else values
    return {
        "thresholds": json_thresholds(class_names, values),
        "threshold_notes": {n: operating.note(j) for j, n in enumerate(class_names)},
        "thresholds_chosen": operating.how,
    }


def conformal_fields(state: ConformalState | None) -> dict[str, Any]:
    """What a card says of its conformal rule (``evaluation.conformal``): ``"conformal"``, the
    rule as ``conformal.json`` holds it with the file's name (and the calibration its
    thresholds were mapped through), or null (no positive/negative/refer decisions)."""
    if state is None:
        return {"conformal": None}
    entry = state.to_json()
    entry["file"] = state.source.name if state.source else None
    if state.mapped_through:
        entry["mapped_through"] = state.mapped_through
    return {"conformal": entry}


def sidecar_conformal(
    card: dict[str, Any], model_file: str | Path, class_names: list[str]
) -> ConformalState | None:
    """The conformal rule a sidecar carries (None: it has none), checked against the model's
    classes; a damaged one is a ``DataError`` naming the sidecar."""
    data = card.get("conformal")
    if data is None:
        return None
    where = f'{sidecar_path(model_file)} (its "conformal")'
    return ConformalState.from_json(data, class_names, where)


def conformal_rule(
    model_file: str | Path, given: str | Path | None, class_names: list[str]
) -> ConformalState | None:
    """The conformal rule a model file is used with, by one rule for the API and the commands:
    ``conformal=<file>`` when given; for an export (a sidecar beside it), the rule its sidecar
    carries; else the ``conformal.json`` beside the file or in its run folder (``find_conformal``)."""
    model_file = Path(model_file).expanduser()
    if not given and sidecar_path(model_file).is_file():
        rule = sidecar_conformal(read_sidecar(model_file), model_file, class_names)
        if rule is not None:
            log.info('conformal decisions from %s (its "conformal")', sidecar_path(model_file))
            return rule
    return find_conformal(model_file, given, class_names)


def identity_fields(identity: ModelIdentity) -> dict[str, Any]:
    """The model named as every command names it (``model_identity``), with the checkpoint's
    file name only: the card is served to clients."""
    public = replace(
        identity, checkpoint=Path(identity.checkpoint).name if identity.checkpoint else None
    )
    return {"recipe": public.recipe, "label_set": public.label_set, "model": public.line()}


def json_thresholds(class_names: list[str], values: list[float]) -> dict[str, float | None]:
    """``{class: threshold}``, null where undefined (JSON has no NaN)."""
    return {
        n: None if math.isnan(float(v)) else float(v)
        for n, v in zip(class_names, values, strict=True)
    }


def preprocessing(backbone: str, image_size: int) -> dict[str, Any]:
    """How an image becomes the model's input (what a client outside this package must do)."""
    # Here, not at the top: predict on an ONNX export reads sidecars without importing torch.
    from chexnet_pl.models.backbones import backbone_spec
    from chexnet_pl.serving.served_model import INPUT

    spec = backbone_spec(backbone)
    return {
        "decode": "8-bit grayscale: colour and alpha dropped (PIL 'L'), 16-bit rescaled by its "
        "range (chexnet_pl.data.images.to_uint8_gray)",
        "resize": f"area interpolation to {image_size}x{image_size}, no crop, aspect not kept "
        "(OpenCV INTER_AREA, a whole-factor step first: chexnet_pl.data.transforms.area_resize)",
        "input": {"name": INPUT, "dtype": "uint8", "shape": ["batch", 1, image_size, image_size]},
        "normalisation": "inside the model: x / 255, gray repeated to 3 channels, (x - mean) / std",
        "mean": list(spec.mean),
        "std": list(spec.std),
    }


def model_description(
    checkpoint: str | Path,
    backbone: str,
    class_names: list[str],
    image_size: int,
    thresholds: list[float],
    thresholds_source: str | None,
    outputs: list[str],
    checkpoint_sha256: str | None = None,
) -> dict[str, Any]:
    """The model's description: the export's sidecar and ``GET /model`` (no path: the file's name
    and SHA-256 only). Not ``MODEL_CARD.md``, which is ``serving.model_card``'s."""
    checkpoint = Path(checkpoint).expanduser()
    return {
        "classes": list(class_names),
        "image_size": int(image_size),
        "backbone": backbone,
        "outputs": outputs,
        "preprocessing": preprocessing(backbone, image_size),
        "thresholds": json_thresholds(class_names, thresholds),
        "thresholds_source": thresholds_source
        or f"none found: {DEFAULT_THRESHOLD} for every class",
        "checkpoint": checkpoint.name,  # the name only: it is served to clients
        "checkpoint_sha256": checkpoint_sha256 or file_sha256(checkpoint),
    }


def sidecar_path(model_file: str | Path) -> Path:
    """``best.onnx`` → ``best.onnx.json`` (one per exported file, whatever its format)."""
    model_file = Path(model_file)
    return model_file.with_name(model_file.name + ".json")


def read_sidecar(model_file: str | Path) -> dict[str, Any]:
    """The sidecar of an exported model, checked against the model file: its ``model_sha256``
    must be the file's (an export stopped between its two renames leaves a sidecar describing
    another model). ``ServingError`` names both files and says what to do."""
    model_file = Path(model_file)
    path = sidecar_path(model_file)
    again = "export the checkpoint again with chexnet-export"
    if not path.is_file():
        raise ServingError(
            f"{path} not found: an exported model is used with the JSON sidecar chexnet-export "
            f"writes beside it; {again}"
        )
    try:
        card = json.loads(path.read_text())
        expected = card.get("model_sha256")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise ServingError(f"{path} is damaged ({type(exc).__name__}: {exc}); {again}") from exc
    if not expected:
        raise ServingError(
            f"{path} does not name its model's SHA-256 (written by an older chexnet-export), so "
            f"it cannot be checked against {model_file.name}; {again}"
        )
    if not model_file.is_file():
        raise ServingError(f"{model_file} not found beside its sidecar {path.name}; {again}")
    actual = file_sha256(model_file)
    if actual != expected:
        raise ServingError(
            f"{path.name} describes another model than {model_file} (SHA-256 {expected[:12]}… in "
            f"the sidecar, {actual[:12]}… on disk): an export was stopped between writing the two, "
            f"or one of them was replaced; {again}"
        )
    return card
