"""A decoded X-ray → probabilities, the prediction table and heat-map overlays, through the one
model-owning worker (``BatchingQueue``)."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from chexnet_pl.data.resize import area_resize
from chexnet_pl.evaluation.calibration import Calibration
from chexnet_pl.evaluation.conformal import ConformalState
from chexnet_pl.label_sets import resolve_label
from chexnet_pl.serving.backends import OnnxBackend, TorchBackend
from chexnet_pl.serving.batching import BatchingQueue
from chexnet_pl.serving.decode import UploadError
from chexnet_pl.visualization.figures import overlay, prediction_table, upsample

# Which heat maps a request wants: none, the most probable finding's, every finding's, or one.
HEAT_CHOICES = ("none", "top", "all")
OOD_WARNING = (
    "This image looks unlike the chest X-rays the model was trained on (out of distribution): "
    "its probabilities may be meaningless."
)


@dataclass
class Job:
    image: np.ndarray  # H×W uint8 at the model's input size
    heat: str | int  # "none" | "top" | "all" | a class index


@dataclass
class JobResult:
    probabilities: np.ndarray  # K
    maps: dict[int, np.ndarray] = field(default_factory=dict)  # class index → H×W in [0, 1]
    ood_score: float | None = None  # Mahalanobis distance (chexnet_pl.ood); None: no OOD flag
    in_distribution: bool | None = None


class Predictor:
    """Owns the backend through a batching worker; safe to call from many threads."""

    def __init__(self, backend: TorchBackend | OnnxBackend, card: dict, max_batch: int = 8) -> None:
        self.backend = backend
        self.card = card
        self.class_names: list[str] = list(card["classes"])
        # the card's calibration (checked when read by load_backend) applies to every answer
        scaling = card.get("calibration")
        self.calibration = (
            Calibration.from_json(scaling, None, self.class_names) if scaling else None
        )
        self.calibration_label = f"{scaling['method']} ({scaling['file']})" if scaling else None
        self.image_size = int(card["image_size"])
        # null: undefined on validation, no verdict (never 0.5); notes say why, or flag it
        self.thresholds = [
            float("nan") if card["thresholds"][name] is None else float(card["thresholds"][name])
            for name in self.class_names
        ]
        notes = card.get("threshold_notes") or {}
        self.threshold_notes = [str(notes.get(name) or "") for name in self.class_names]
        # the conformal rule (thresholds already on the probabilities served), or None
        rule = card.get("conformal")
        self.conformal = (
            ConformalState.from_json(rule, self.class_names, "the served model's conformal rule")
            if rule
            else None
        )
        self.queue: BatchingQueue[Job, JobResult] = BatchingQueue(self._run_batch, max_batch)

    def heat_choice(self, value: str) -> str | int:
        """``none`` / ``top`` / ``all`` / a finding's name (→ its index); else a 422."""
        if value != "none" and self.backend.heatmaps == "none":
            raise UploadError(
                422, f"overlay={value!r}: this model has no heat maps on the {self.backend.name} "
                "backend (no CAM output; Grad-CAM needs backend=torch); use overlay=none",
            )  # fmt: skip
        if value in HEAT_CHOICES:
            return value
        finding = resolve_label(value, self.class_names)  # a space or an underscore
        if finding is not None:
            return self.class_names.index(finding)
        raise UploadError(
            422, f"overlay={value!r}: use one of {[*HEAT_CHOICES, *self.class_names]}"
        )

    def model_input(self, gray: np.ndarray) -> np.ndarray:
        """Full-resolution gray → the model's H×W uint8 input (as in evaluation)."""
        return area_resize(gray, self.image_size)

    def submit(self, image: np.ndarray, heat: str | int = "none") -> Future[JobResult]:
        """``image``: ``model_input``'s output. The result comes from the model's worker."""
        return self.queue.submit(Job(image, heat))

    def _chosen(self, heat: str | int, probabilities: np.ndarray) -> list[int]:
        if heat == "none":
            return []
        if heat == "top":
            return [int(np.argmax(probabilities))]
        if heat == "all":
            return list(range(len(self.class_names)))
        return [int(heat)]

    def _run_batch(self, jobs: Sequence[Job]) -> list[JobResult]:
        images = np.stack([job.image for job in jobs])[:, None]
        outputs = self.backend.run(np.ascontiguousarray(images))
        results = []
        state = self.backend.ood
        scores = None
        if state is not None and outputs.features is not None:
            scores = state.scores(outputs.features, "the served checkpoint")
        probabilities_of = outputs.probabilities
        if self.calibration is not None:
            probabilities_of = self.calibration.apply(probabilities_of, self.class_names)
        for i, job in enumerate(jobs):
            probabilities = probabilities_of[i].astype(np.float32)
            chosen = self._chosen(job.heat, probabilities)
            if outputs.cams is not None:
                maps = {k: outputs.cams[i, k] for k in chosen}
            else:
                maps = {k: self.backend.grad_cam(images[i], k) for k in chosen}
            result = JobResult(probabilities, maps)
            if scores is not None:
                result.ood_score = float(scores[i])
                result.in_distribution = bool(scores[i] <= state.threshold)
            results.append(result)
        return results

    def table(self, probabilities: np.ndarray) -> pd.DataFrame:
        """The ``predict`` table: finding, probability, threshold (NaN: undefined), above it (NA:
        no verdict), the threshold's note; most probable first."""
        return prediction_table(
            probabilities, self.class_names, thresholds=self.thresholds, notes=self.threshold_notes
        )

    def decisions(self, probabilities: np.ndarray) -> dict[str, str] | None:
        """Per finding, ``positive``, ``negative`` or ``refer`` (None: no conformal rule)."""
        if self.conformal is None:
            return None
        decided = self.conformal.decide(np.asarray(probabilities)[None, :])[0]
        return {n: str(d) for n, d in zip(self.class_names, decided, strict=True)}

    def ood_answer(self, result: JobResult) -> dict | None:
        """The response's ``ood`` field: the score, the verdict and a warning when flagged;
        None when the model has no OOD flag."""
        if result.ood_score is None:
            return None
        state = self.backend.ood
        return {
            "ood_score": result.ood_score,
            "in_distribution": result.in_distribution,
            "threshold": state.threshold,
            "false_alarm_rate": state.false_alarm_rate,
            "warning": None if result.in_distribution else OOD_WARNING,
        }

    def close(self) -> None:
        self.queue.close()


def overlay_png(gray: np.ndarray, heat: np.ndarray, max_side: int = 512) -> str:
    """The heat map blended on the X-ray (shrunk so its longer side is ``max_side``), as a PNG
    data URL."""
    height, width = gray.shape
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    blended = overlay(gray, upsample(heat, gray.shape))
    buffer = io.BytesIO()
    Image.fromarray(blended).save(buffer, format="PNG", compress_level=3)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
