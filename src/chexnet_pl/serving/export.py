"""Export a checkpoint as it is served (``ServedModel``) to ONNX or TorchScript, or its network's
weights to safetensors (``serving.safetensors_export``), check the file against PyTorch, and write
its JSON sidecar and ``MODEL_CARD.md`` (``serving.model_card``) beside it.

ONNX goes through ``torch.onnx.export(dynamo=True)``, the ``torch.export``-based exporter (the
default since torch 2.9; it needs ``onnxscript``). The older TorchScript-based exporter
(``dynamo=False``) is ~20× faster for DenseNet-121 (0.8 s against ~17 s on a 2-core CPU) but is
deprecated and announced for removal; ``torch.export`` also proves the batch dimension symbolic
(``dynamic_shapes``) instead of baking a traced size into the graph. TorchScript
(``torch.jit.trace``) is deprecated in torch 2.x as well; it is offered for runtimes that embed
libtorch, and ONNX is the format to prefer.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from chexnet_pl.errors import ServingError
from chexnet_pl.evaluation.conformal import find_conformal
from chexnet_pl.evaluation.thresholds import operating_thresholds
from chexnet_pl.files import file_identity
from chexnet_pl.model_identity import of_parts
from chexnet_pl.serving.model_card import calibration_fields, card_text, publish_card
from chexnet_pl.serving.publish import destination, prepare_destination, publish
from chexnet_pl.serving.safetensors_export import (
    network_fields,
    safetensors_bytes,
    safetensors_runner,
)
from chexnet_pl.serving.served_model import INPUT, ServedModel
from chexnet_pl.serving.sidecar import (
    conformal_fields,
    identity_fields,
    model_description,
    sidecar_path,
    threshold_fields,
)

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}
EXPORTERS = {
    "onnx": "torch.onnx.export(dynamo=True)",
    "torchscript": "torch.jit.trace",
    "safetensors": "safetensors.torch.save (the network's weights; rebuilt from 'network')",
}
# Exported probabilities must equal PyTorch's within this (checked at export and in the tests).
PARITY_TOLERANCE = 1e-4


def example_images(batch: int, image_size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, 1, image_size, image_size)
    return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)


def onnx_bytes(served: ServedModel, image_size: int) -> bytes:
    """The ONNX model (one file, weights inside) with a symbolic batch dimension."""
    started = time.perf_counter()
    for name in ("onnxscript", "onnx_ir"):  # one INFO line per graph rewrite otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation chatter
        program = torch.onnx.export(
            served.eval(),
            (example_images(2, image_size),),
            dynamo=True,
            input_names=[INPUT],
            output_names=served.output_names,
            dynamic_shapes={INPUT: {0: torch.export.Dim("batch")}},
            verbose=False,
        )
    log.info("ONNX export took %.1f s", time.perf_counter() - started)
    return program.model_proto.SerializeToString()


def onnx_session(model: bytes | str | Path, spinning: bool = True):
    """An ONNX Runtime session on the CPU provider. ``spinning=False`` keeps its idle threads from
    busy-waiting for work (in a server they would take the CPU from decoding the next request)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def torchscript_bytes(served: ServedModel, image_size: int) -> bytes:
    with warnings.catch_warnings():
        # torch.jit is deprecated in torch 2.x; and the normaliser's "is the input one channel?"
        # check is a constant for this input contract, which is what the tracer warns about.
        warnings.simplefilter("ignore")
        # check_trace would run the graph again on the same batch; export_checkpoint compares
        # it with PyTorch on a batch of another size instead (which also proves the dynamic batch).
        traced = torch.jit.trace(served.eval(), (example_images(2, image_size),), check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def load_torchscript(model: bytes | str | Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        source = io.BytesIO(model) if isinstance(model, bytes) else str(model)
        return torch.jit.load(source, map_location="cpu").eval()


def runner(fmt: str, model: bytes | str | Path) -> Callable[[np.ndarray], list[np.ndarray]]:
    """uint8 N×1×H×W array → the exported model's outputs as arrays, for either format."""
    if fmt == "onnx":
        session = onnx_session(model)
        return lambda images: session.run(None, {INPUT: images})
    module = load_torchscript(model)

    def run(images: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            outputs = module(torch.from_numpy(images))
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return [o.numpy() for o in outputs]

    return run


def max_difference(
    served: ServedModel, run: Callable[[np.ndarray], list[np.ndarray]], images: torch.Tensor
) -> list[float]:
    """Largest absolute difference of each output between PyTorch and an exported model."""
    with torch.no_grad():
        expected = served(images)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = run(images.numpy())
    return [float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected, strict=True)]


def export_checkpoint(
    checkpoint: str | Path,
    fmt: str = "onnx",
    image_size: int | None = None,
    out: str | Path | None = None,
    cams: bool = False,
    thresholds: str | Path | None = None,
    conformal: str | Path | None = None,
) -> Path:
    """Export ``checkpoint`` as served (uint8 in, probabilities [and CAMs] out; ONNX also the
    pooled ``features``) to ``out``
    (default: beside the checkpoint, ``best.onnx`` / ``best.pt``; a folder: that name in it),
    check it against PyTorch on a batch of another size than the traced one, and publish it with
    ``<out>.json`` (``publish``), which carries the conformal rule (``conformal=`` or the
    checkpoint's run's ``conformal.json``: ``evaluation.conformal.find_conformal``) as
    ``"conformal"``, then write ``MODEL_CARD.md`` beside it. ``fmt="safetensors"``: the
    network's weights, rebuilt from the sidecar's ``network`` to be checked. Returns the model
    file."""
    from chexnet_pl.checkpoints.runs import load_run
    from chexnet_pl.models.input_contract import input_size

    if fmt not in FORMATS:
        raise ServingError(f"format={fmt!r}; use one of {sorted(FORMATS)}")
    checkpoint = Path(checkpoint).expanduser()
    out = destination(out, checkpoint, FORMATS[fmt])
    prepare_destination(out)  # before the work: an unwritable folder stops here
    run = load_run(checkpoint, device="cpu")
    model = run.model.float()
    backbone = model.hparams.backbone
    image_size = input_size(model, image_size, error=ServingError)  # before any export work
    # ONNX exports carry the pooled features too (chexnet_pl.load(...).features on an export);
    # TorchScript keeps its outputs as they were; safetensors is the whole network again.
    served = ServedModel(model, cams=cams, features=fmt != "torchscript").eval()

    extra = {}
    if fmt == "safetensors":
        extra["network"] = network_fields(model, image_size)
        data = safetensors_bytes(model)
        run_export = safetensors_runner(extra["network"], data, served, checkpoint)
    else:
        data = (
            onnx_bytes(served, image_size)
            if fmt == "onnx"
            else torchscript_bytes(served, image_size)
        )
        run_export = runner(fmt, data)
    differences = max_difference(served, run_export, example_images(3, image_size, seed=1))
    if differences[0] > PARITY_TOLERANCE:
        raise ServingError(
            f"the {fmt} export of {checkpoint} differs from PyTorch by {differences[0]:.2e} in its "
            f"probabilities (tolerance {PARITY_TOLERANCE:.0e}); nothing was written"
        )
    operating = operating_thresholds(checkpoint, thresholds, model.class_names)
    values = list(operating.values)
    source = str(operating.source) if operating.source else None
    identity = file_identity(checkpoint)  # before it is hashed: a change between is caught
    card = model_description(
        checkpoint, backbone, model.class_names, image_size, values, source, served.output_names
    )
    card.update(threshold_fields(operating, model.class_names))
    card.update(conformal_fields(find_conformal(checkpoint, conformal, model.class_names)))
    card.update(calibration_fields(operating.source, model.class_names))
    # The OOD flag (chexnet_pl.ood) travels with an ONNX export (it outputs the features) and a
    # safetensors one (the whole network again); a TorchScript export has no features output.
    if run.ood is not None and fmt in ("onnx", "safetensors"):
        card["ood"] = run.ood.to_sidecar()
    card.setdefault("ood", None)
    card.update(identity_fields(of_parts(backbone, model.class_names, image_size, checkpoint)))
    card.update(
        {
            "checkpoint_file": identity,  # predict trusts the SHA-256 while this is unchanged
            "format": fmt,
            "file": out.name,
            "exporter": EXPORTERS[fmt],
            "torch": torch.__version__,
            "max_abs_difference_vs_pytorch": dict(
                zip(served.output_names, differences, strict=True)
            ),
            **extra,
        }
    )
    # The card is read from the run's files before anything is written: a damaged one stops here.
    text = card_text(checkpoint, {**card, "model_sha256": hashlib.sha256(data).hexdigest()},
                     thresholds)  # fmt: skip
    publish(out, data, card)
    card_file = publish_card(out.parent, text)
    log.info(
        "%s → %s (%.1f MB), %s and %s; outputs %s, largest difference from PyTorch %s",
        checkpoint, out, out.stat().st_size / 1e6, sidecar_path(out).name, card_file.name,
        served.output_names,
        ", ".join(f"{d:.1e}" for d in differences),
    )  # fmt: skip
    return out
