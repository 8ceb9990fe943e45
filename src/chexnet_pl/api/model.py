"""``chexnet_pl.load``: a trained model — a checkpoint, or its ONNX / TorchScript export — with
its input contract, class names, operating thresholds and calibration, to predict, explain and
embed images in Python with the same numbers as ``chexnet-predict``."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from chexnet_pl.api.inputs import ImageLike, as_xrays, gray_pixels
from chexnet_pl.errors import DataError
from chexnet_pl.evaluation.conformal import (
    ConformalState,
    add_decisions,
    with_calibration,
)
from chexnet_pl.evaluation.thresholds import OperatingThresholds, operating_thresholds
from chexnet_pl.label_sets import resolve_label
from chexnet_pl.visualization.explain import model_input
from chexnet_pl.visualization.figures import overlay as blend
from chexnet_pl.visualization.figures import upsample
from chexnet_pl.visualization.methods import METHODS, check_method

log = logging.getLogger(__name__)

EXPORT_FORMATS = {".onnx": "onnx", ".pt": "torchscript"}
REEXPORT = "export it again with: chexnet-export ckpt=<its checkpoint> format=onnx cams=true"


class Model:
    """A trained chest X-ray classifier, as ``chexnet_pl.load`` returns it.

    Attributes:
        path: the checkpoint or export it was read from.
        backend: ``torch`` (a checkpoint), ``onnx`` or ``torchscript`` (an export), or
            ``safetensors`` (an export rebuilt as the PyTorch network: everything a checkpoint does).
        class_names: the model's outputs, in order (``prob_<name>`` columns).
        image_size: the square size images are resized to (area interpolation), as trained.
        input_contract: what the model takes: backbone, image size, mean/std, input layout.
        thresholds: each finding's operating threshold (``above_<name>``), by the commands' rule:
            ``thresholds=`` given, else the ``aucs.csv`` beside the checkpoint or in its run
            folder, else 0.5 (for an export: those recorded in its sidecar); NaN where the
            evaluation could not choose one (``thresholds_how`` says how they were chosen).
        thresholds_source: the file the thresholds came from (None: 0.5 for every class).
        thresholds_how: how they were chosen: ``{"rule": "Youden's J on the validation split",
            "positives": [...]}`` (the positives per class of that split).
        threshold_notes: per finding whose threshold is undefined or degenerate on validation,
            why (e.g. ``undefined: no positives on val``); findings with a usable one are absent.
        calibration: the calibration applied to every probability (``calibration=``), or None.
        conformal: the conformal positive/negative/refer rule (``decision_<name>``;
            ``evaluation.conformal``): ``conformal=`` given, else the ``conformal.json`` beside
            the checkpoint or in its run folder (an export: the one in its sidecar), else None.
        network: the PyTorch network (``ChestXrayNet``) of a checkpoint or a safetensors
            export; None for an ONNX or TorchScript export.
        ood: the fitted out-of-distribution flag (``chexnet_pl.ood.OodState``: its
            ``threshold``, ``false_alarm_rate``, ...), from the checkpoint or the export's
            sidecar; None when none was fitted (``ood_score`` is then NaN).
    """

    def __init__(
        self,
        path: Path,
        backend: str,
        class_names: Sequence[str],
        image_size: int,
        input_contract: dict[str, Any],
        operating: OperatingThresholds,
        calibration_file: str | Path | None,
        network: Any = None,
        export: Any = None,
        conformal: Any = None,
        ood: Any = None,
    ) -> None:
        from chexnet_pl.visualization.inputs import calibration_and_thresholds

        self.path = path
        self.backend = backend
        self.class_names = list(class_names)
        self.image_size = int(image_size)
        self.input_contract = input_contract
        self.network = network
        self._export = export
        self.ood = ood
        if ood is None:
            from chexnet_pl.ood import HOW_TO_FIT

            log.info("%s has no OOD flag (ood_score is NaN); fit one with %s", path.name,
                     HOW_TO_FIT)  # fmt: skip
        self.calibration, values = calibration_and_thresholds(
            str(calibration_file) if calibration_file else None, operating, self.class_names
        )
        self.thresholds = dict(zip(self.class_names, values, strict=True))
        self.conformal = with_calibration(
            conformal, self.calibration, Path(str(calibration_file)).name
        )
        self.thresholds_source = str(operating.source) if operating.source else None
        self.thresholds_how = operating.how
        self.threshold_notes = {
            name: operating.note(j) for j, name in enumerate(self.class_names) if operating.note(j)
        }

    def __repr__(self) -> str:
        return (
            f"Model({self.path.name}, backend={self.backend}, {len(self.class_names)} classes, "
            f"{self.image_size} px)"
        )

    def predict(
        self, images: ImageLike | Iterable[ImageLike], batch_size: int = 16
    ) -> pd.DataFrame:
        """Probabilities of every finding, one row per image, as ``chexnet-predict`` computes them.

        Args:
            images: a path (PNG, JPEG or DICOM), a folder of them, a numpy array, a PIL image,
                or a list of these.
            batch_size: images run through the model at once.

        Returns:
            A DataFrame with ``image`` (the path as given, or ``image <i>``), ``prob_<finding>``
            (calibrated when the model has a calibration) and ``above_<finding>``
            (``prob >= threshold``; NA where the threshold is undefined: the validation split had
            no positives or no negatives for it, so there is no verdict); with a conformal rule
            (``Model.conformal``), ``decision_<finding>``: ``positive``, ``negative`` or
            ``refer``; ``ood_score`` (the Mahalanobis distance of the image's features to the
            training X-rays') and ``in_distribution`` (``ood_score <= ood.threshold``; False: unlike the training
            data, its probabilities may be meaningless; NaN / NA when no flag was fitted).
        """
        from chexnet_pl.ood import flag_columns, log_flags

        frames, features = [], []
        xrays = as_xrays(images)
        for start in range(0, len(xrays), _positive(batch_size, "batch_size")):
            batch = xrays[start : start + batch_size]
            pixels = model_input(batch, self.image_size)
            probabilities = self._probabilities(pixels)
            frame = pd.DataFrame(probabilities, columns=[f"prob_{n}" for n in self.class_names])
            frame.insert(0, "image", [x.name for x in batch])
            frames.append(frame)
            if self.ood is not None:
                features.append(self._features(pixels))
        table = pd.concat(frames, ignore_index=True)
        for name in self.class_names:  # an undefined threshold gives no verdict: NA, not False
            threshold = self.thresholds[name]
            above = pd.array(table[f"prob_{name}"].to_numpy() >= threshold, dtype="boolean")
            if np.isnan(threshold):
                above[:] = pd.NA
            table[f"above_{name}"] = above
        pooled = np.concatenate(features) if features else None
        for key, values in flag_columns(self.ood, pooled, len(table), self.path).items():
            table[key] = values
        if self.ood is not None:
            log_flags(table["image"], table, self.ood, self.path)
        return add_decisions(table, self.conformal)

    def explain(self, image: ImageLike, finding: str, method: str = "cam") -> np.ndarray:
        """A heat map of where ``finding`` is seen in ``image``.

        Args:
            image: a path (PNG, JPEG or DICOM), a numpy array or a PIL image.
            finding: a class name (a space or an underscore: ``Pleural Thickening``).
            method: ``cam``, ``auto`` or a Grad-CAM method (``chexnet_pl.visualization.methods``);
                an export has ``cam`` (and ``auto``) only, when exported with ``cams=true``.

        Returns:
            H × W float32 array (the image's size) with values in [0, 1], as the commands draw.
        """
        check_method(method)
        xrays = as_xrays(image)
        if len(xrays) != 1:
            raise DataError(f"explain takes one image, not {len(xrays)}; call it once per image")
        xray = xrays[0]
        index = self._class_index(finding)
        batch = model_input([xray], self.image_size)
        if self.network is not None:
            import torch

            from chexnet_pl.visualization.heatmaps import heatmaps

            heat = heatmaps(self.network, torch.from_numpy(batch), [index], method)[0, 0].numpy()
        else:
            if method not in ("cam", "auto"):
                raise DataError(
                    f"method={method} needs PyTorch: load the checkpoint ({self.path.stem}.ckpt) "
                    "instead of its export, which has CAMs only"
                )
            heat = self._export_outputs(batch, "cams", "heat maps (exported without cams=true)")
            heat = heat[0, index]
        return np.clip(upsample(np.asarray(heat, np.float32), xray.gray.shape), 0.0, 1.0)

    def features(self, images: ImageLike | Iterable[ImageLike], batch_size: int = 16) -> np.ndarray:
        """The pooled penultimate embedding (what the classifier reads) of each image.

        Args:
            images: as ``predict`` takes them.
            batch_size: images run through the model at once.

        Returns:
            N × D float32 array, one row per image in order (D: 1024 for DenseNet-121).
        """
        rows = []
        xrays = as_xrays(images)
        for start in range(0, len(xrays), _positive(batch_size, "batch_size")):
            rows.append(self._features(model_input(xrays[start : start + batch_size],
                                                   self.image_size)))  # fmt: skip
        return np.concatenate(rows).astype(np.float32)

    def _features(self, batch: np.ndarray) -> np.ndarray:
        if self.network is not None:
            return _torch_features(self.network, batch)
        return self._export_outputs(batch, "features", "features")

    def _class_index(self, finding: str) -> int:
        name = resolve_label(str(finding), self.class_names)
        if name is None:
            raise DataError(f"finding {finding!r} is not an output of this model; use one of "
                            f"{self.class_names}")  # fmt: skip
        return self.class_names.index(name)

    def _probabilities(self, batch: np.ndarray) -> np.ndarray:
        if self.network is not None:
            from chexnet_pl.visualization.torch_explainer import TorchExplainer

            probabilities = TorchExplainer(self.network, "auto").probabilities(batch)
        else:
            probabilities = self._export_outputs(batch, "probabilities", "probabilities")
        if self.calibration is not None:
            probabilities = self.calibration.apply(probabilities, self.class_names)
        return np.asarray(probabilities, dtype=np.float32)

    def _export_outputs(self, batch: np.ndarray, output: str, what: str) -> np.ndarray:
        outputs = self._export["outputs"]
        if output == "features" and self.backend == "torchscript":
            raise DataError(
                f"{self.path} has no features output: TorchScript exports carry probabilities "
                "(and CAMs) only; load the checkpoint, or its ONNX export (format=onnx)"
            )
        if output not in outputs:
            raise DataError(
                f"{self.path} has no {what} output (its outputs: {outputs}); it was exported "
                f"before or without them: {REEXPORT}"
            )
        values = self._export["run"](np.ascontiguousarray(batch, dtype=np.uint8))
        return np.asarray(values[outputs.index(output)])


def _positive(value: int, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise DataError(f"{name}={value!r}; give a whole number of at least 1")
    return value


def _torch_features(network: Any, batch: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        images = torch.from_numpy(np.ascontiguousarray(batch)).to(network.device)
        features = network.forward_features(network.prepare_input(images))
        pooled = network.pre_logits(network.pool(features))
        return pooled.float().cpu().numpy()


def load(
    path: str | Path,
    device: str = "cpu",
    thresholds: str | Path | None = None,
    calibration: str | Path | None = None,
    conformal: str | Path | None = None,
) -> Model:
    """A trained model, ready to predict, explain and embed images.

    Args:
        path: a checkpoint (``<run>/checkpoints/best.ckpt``, or one from
            ``chexnet-import-weights``), or an export of one: ``best.onnx``, ``best.pt`` or
            ``best.safetensors`` with its ``.json`` sidecar (``chexnet-export``); a safetensors
            export is read with no pickle (its network rebuilt from the sidecar).
        device: where a checkpoint's network runs (``cpu``, ``cuda``, ``cuda:1``, ``mps``);
            exports run on the CPU.
        thresholds: an evaluation's ``aucs.csv`` whose ``threshold`` column gives the operating
            thresholds; default: the rule of the commands (see ``Model.thresholds``).
        calibration: an evaluation's ``calibration.json``, applied to every probability (the
            thresholds found in an aucs.csv are mapped through it too), as ``calibration=`` does.
        conformal: an evaluation's ``conformal.json`` (``decision_<finding>`` columns); default:
            the rule of the commands (see ``Model.conformal``).

    Returns:
        A ``Model``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(
            f"model file not found: {path} (a .ckpt, or an export: .onnx / .pt / .safetensors)"
        )
    fmt = EXPORT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        return _load_checkpoint(path, device, thresholds, calibration, conformal)
    return _load_export(path, fmt, device, thresholds, calibration, conformal)


def _load_checkpoint(path: Path, device: str, thresholds, calibration, conformal=None) -> Model:
    from dataclasses import asdict

    from chexnet_pl.checkpoints.runs import load_run
    from chexnet_pl.models.input_contract import input_size

    run = load_run(path, device=device)  # a .safetensors export: rebuilt without pickle
    network = run.model.float() if device == "cpu" else run.model
    names = list(network.class_names)
    contract = {**asdict(network.input_contract), "input": "uint8 N×1×H×W gray"}
    backend = "safetensors" if path.suffix.lower() == ".safetensors" else "torch"
    from chexnet_pl.serving.sidecar import conformal_rule

    rule = conformal_rule(path, conformal, names)  # a safetensors export: its sidecar's
    return Model(
        path, backend, names, input_size(network), contract,
        operating_thresholds(path, thresholds, names), calibration, network=network,
        conformal=rule, ood=run.ood,
    )  # fmt: skip


def _load_export(
    path: Path, fmt: str, device: str, thresholds, calibration, conformal=None
) -> Model:
    from chexnet_pl.evaluation.thresholds import read_thresholds
    from chexnet_pl.serving.sidecar import read_sidecar, sidecar_conformal, sidecar_path

    card = read_sidecar(path)  # checked against the file: a stale sidecar is refused
    names = [str(n) for n in card["classes"]]
    if device != "cpu":
        log.info("%s runs on the CPU (device=%s applies to checkpoints)", path.name, device)
    if thresholds:
        source = Path(thresholds).expanduser()
        operating = OperatingThresholds(
            tuple(read_thresholds(source, names)), source, "given as thresholds="
        )
    else:
        recorded = str(card.get("thresholds_source") or "")
        source = None if recorded.startswith("none found") or not recorded else Path(recorded)
        recorded_values = card["thresholds"]  # null: undefined on validation (no verdict)
        values = tuple(
            float("nan") if recorded_values[n] is None else float(recorded_values[n]) for n in names
        )
        operating = OperatingThresholds(values, source, "recorded in the export's sidecar")
    export = {"outputs": list(card["outputs"]), "run": _export_runner(fmt, path)}
    contract = {"backbone": card.get("backbone"), **card.get("preprocessing", {})}
    ood = None
    if card.get("ood") is not None:
        from chexnet_pl.ood import OodState

        ood = OodState.from_stored(card["ood"], sidecar_path(path))
    rule = (
        ConformalState.read(conformal, names, "given as conformal=")
        if conformal
        else sidecar_conformal(card, path, names)
    )
    return Model(
        path, fmt, names, int(card["image_size"]), contract, operating, calibration,
        export=export, conformal=rule, ood=ood,
    )  # fmt: skip


def _export_runner(fmt: str, path: Path):
    """uint8 N×1×H×W → the export's outputs (a list, in its sidecar's order)."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda images: session.run(None, {name: images})
    from chexnet_pl.serving.export import runner

    return runner("torchscript", path)


def overlay(image: ImageLike, heat: np.ndarray) -> Image.Image:
    """The heat map drawn on the X-ray as the commands draw it: colour-mapped where it is in its
    top share, the gray pixels elsewhere.

    Args:
        image: the X-ray (a path, a numpy array or a PIL image).
        heat: a map with values in [0, 1] (``Model.explain``'s; another size is resized).

    Returns:
        An RGB PIL image at the X-ray's resolution.
    """
    gray = as_xrays(image)[0].gray if not isinstance(image, Image.Image) else gray_pixels(image)
    heat = np.asarray(heat, dtype=np.float32)
    if heat.ndim != 2:
        raise DataError(f"heat must be an H×W map, not shape {heat.shape}")
    return Image.fromarray(blend(gray, heat))


__all__ = ["METHODS", "Model", "load", "overlay"]
