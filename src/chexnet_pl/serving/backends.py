"""The two ways the service runs the model: PyTorch (``ServedModel``) or ONNX Runtime (its export).

Both take a uint8 N×1×H×W batch and give probabilities (N×K) and, where the model has them, the
class activation maps of every class (N×K×H×W in [0, 1]). Backbones without a CAM head get a
Grad-CAM map per asked finding from the PyTorch backend only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from chexnet_pl.evaluation.calibration import Calibration
from chexnet_pl.evaluation.conformal import find_conformal, with_calibration
from chexnet_pl.evaluation.thresholds import operating_thresholds
from chexnet_pl.files import file_sha256
from chexnet_pl.model_identity import of_checkpoint
from chexnet_pl.serving.export import onnx_bytes, onnx_session
from chexnet_pl.serving.served_model import (
    CAMS,
    FEATURES,
    INPUT,
    PROBABILITIES,
    ServedModel,
    ServingError,
)
from chexnet_pl.serving.sidecar import (
    conformal_fields,
    identity_fields,
    model_description,
    read_sidecar,
    threshold_fields,
)
from chexnet_pl.visualization.heatmaps import cam_available, grad_cam
from chexnet_pl.visualization.inputs import calibrated_thresholds

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx")


@dataclass
class Outputs:
    probabilities: np.ndarray  # N×K
    cams: np.ndarray | None  # N×K×H×W in [0, 1], or None for a head without CAM
    features: np.ndarray | None = None  # N×D pooled features, when the OOD flag needs them


class TorchBackend:
    name = "torch"
    ood = None  # chexnet_pl.ood.OodState when the service flags out-of-distribution images

    def __init__(self, module) -> None:
        self.module = module.eval()
        self.served = ServedModel(module, cams=cam_available(module)).eval()
        self.has_cams = self.served.with_cams
        self.heatmaps = "cam" if self.has_cams else "gradcam"
        self.device = module.device
        self.with_features = False  # set by load_backend when the checkpoint has an OOD flag

    @torch.inference_mode()
    def run(self, images: np.ndarray) -> Outputs:
        self.served.with_features = self.with_features
        outputs = self.served(torch.from_numpy(images).to(self.device))
        outputs = list(outputs) if isinstance(outputs, tuple) else [outputs]
        features = outputs.pop().float().cpu().numpy() if self.with_features else None
        cams = outputs[1].float().cpu().numpy() if self.has_cams else None
        return Outputs(outputs[0].float().cpu().numpy(), cams, features)

    def grad_cam(self, image: np.ndarray, class_index: int) -> np.ndarray:
        """One image's Grad-CAM map of one class (H×W in [0, 1]), for heads without CAM."""
        return grad_cam(self.module, torch.from_numpy(image[None]), class_index)[0].numpy()


class OnnxBackend:
    name = "onnx"
    ood = None

    def __init__(self, model: bytes | str | Path) -> None:
        # Without spinning: 7.1 against 3.6 requests/s in benchmarks/serve.py on 2 cores.
        self.session = onnx_session(model, spinning=False)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.has_cams = CAMS in self.outputs
        self.heatmaps = "cam" if self.has_cams else "none"

    def run(self, images: np.ndarray) -> Outputs:
        results = dict(zip(self.outputs, self.session.run(None, {INPUT: images}), strict=True))
        return Outputs(results[PROBABILITIES], results.get(CAMS), results.get(FEATURES))

    def grad_cam(self, image: np.ndarray, class_index: int) -> np.ndarray:
        raise ServingError(
            "this ONNX model has no CAM output, and Grad-CAM needs PyTorch: serve with "
            "backend=torch for heat maps"
        )


def load_backend(
    checkpoint: str | Path,
    backend: str = "torch",
    onnx: str | Path | None = None,
    image_size: int | None = None,
    thresholds: str | Path | None = None,
    calibration: str | Path | None = None,
    conformal: str | Path | None = None,
) -> tuple[TorchBackend | OnnxBackend, dict]:
    """The backend and the model card (classes, image size, thresholds, checkpoint hash, and the
    calibration applied to the probabilities, if any).

    ``backend=onnx`` exports the checkpoint in memory at start (with CAMs where the head allows
    them), or uses ``onnx`` (a file from ``chexnet_pl.export``) whose sidecar must name this
    checkpoint's SHA-256 and the file's own. ``calibration`` (an evaluation's calibration.json)
    is checked against the model's classes before anything else is done; thresholds read from
    an aucs.csv, chosen on raw probabilities, are mapped through it, and so is the conformal
    rule (``conformal``, else the checkpoint's run's ``conformal.json``; the card's
    ``"conformal"``).
    """
    from chexnet_pl.checkpoints.runs import load_run
    from chexnet_pl.models.input_contract import input_size

    if backend not in BACKENDS:
        raise ServingError(f"backend={backend!r}; use one of {BACKENDS}")
    checkpoint = Path(checkpoint).expanduser()
    run = load_run(checkpoint)
    module = run.model
    scaling = Calibration.read(calibration, module.class_names) if calibration else None
    sha256 = file_sha256(checkpoint)
    image_size = input_size(module, image_size, error=ServingError)
    if backend == "torch":
        served: TorchBackend | OnnxBackend = TorchBackend(module)
    elif onnx:
        served, image_size = _onnx_from_file(Path(onnx).expanduser(), sha256)
    else:
        module = module.cpu().float()
        log.info("exporting %s to ONNX in memory (backend=onnx)", checkpoint.name)
        served = OnnxBackend(onnx_bytes(
            ServedModel(module, cams=cam_available(module), features=run.ood is not None),
            image_size,
        ))  # fmt: skip
    operating = operating_thresholds(checkpoint, thresholds, module.class_names)
    values = list(operating.values)
    if scaling is not None and operating.source is not None:
        values = calibrated_thresholds(scaling, values, module.class_names)
    rule = find_conformal(checkpoint, conformal, module.class_names)
    if scaling is not None:
        rule = with_calibration(rule, scaling, Path(str(calibration)).name)
    outputs = [PROBABILITIES, CAMS] if served.has_cams else [PROBABILITIES]
    card = model_description(
        checkpoint, module.hparams.backbone, module.class_names, image_size,
        values, None, outputs, checkpoint_sha256=sha256,
    )  # fmt: skip
    # What the page and GET /model show: file names, never the server's folders.
    card["checkpoint"] = checkpoint.name
    card.update(threshold_fields(operating, module.class_names, values))
    card.update(identity_fields(of_checkpoint(module, checkpoint)))
    card["thresholds_source"] = operating.public_description
    card["heatmaps"] = served.heatmaps
    card.update(conformal_fields(rule))
    card["calibration"] = None
    card["ood"] = ood_summary(run.ood, served)
    served.ood = run.ood if card["ood"] is not None else None
    if scaling is not None:
        card["calibration"] = {**scaling.to_json(), "file": Path(calibration).name}
        if operating.source is not None:
            card["thresholds_source"] += f" (mapped through {Path(calibration).name})"
    return served, card


def ood_summary(state, served: TorchBackend | OnnxBackend) -> dict | None:
    """What the page and ``GET /model`` say of the OOD flag (its matrices stay on the server);
    None when the checkpoint has none, or an ONNX file exported without features."""
    from chexnet_pl.models.ood import HOW_TO_FIT

    if state is None:
        log.info("%s: no OOD flag in this checkpoint; fit one with %s", "serve", HOW_TO_FIT)
        return None
    if isinstance(served, TorchBackend):
        served.with_features = True
    elif FEATURES not in served.outputs:
        log.warning("the ONNX model has no features output, so no OOD flag; export it again")
        return None
    return {
        "method": "mahalanobis", "threshold": state.threshold,
        "false_alarm_rate": state.false_alarm_rate, "n_images": state.n_images,
    }  # fmt: skip


def _onnx_from_file(path: Path, checkpoint_sha256: str) -> tuple[OnnxBackend, int]:
    """The backend of an exported file and its image size, once its sidecar is checked against
    the file (``read_sidecar``) and names this checkpoint."""
    if not path.is_file():
        raise ServingError(f"onnx={path} not found; export one with python -m chexnet_pl.export")
    card = read_sidecar(path)
    exported_from = card.get("checkpoint_sha256")
    if exported_from != checkpoint_sha256:
        raise ServingError(
            f"{path} was exported from a checkpoint with SHA-256 {exported_from}, not from ckpt= "
            f"(SHA-256 {checkpoint_sha256}); export this checkpoint, or serve the one it came from"
        )
    return OnnxBackend(path), int(card["image_size"])
