"""Out-of-distribution flag: is an image unlike the X-rays the model was trained on? Its
settings, state and arithmetic (``chexnet_pl.ood`` fits it for a checkpoint and reports it).

The model's pooled penultimate features (``Model.features``) of at most ``ood.max_images``
training images are fitted with one Gaussian (a class-agnostic mean and a shared covariance,
Lee et al. 2018's Mahalanobis detector without the per-class means). The covariance is the
Ledoit-Wolf shrinkage estimate (Ledoit & Wolf 2004: the sample covariance pulled towards a scaled
identity by the data-chosen amount), so it is invertible with fewer images than features. An
image's ``ood_score`` is its Mahalanobis distance to that mean; the threshold is the
``1 - ood.false_alarm_rate`` quantile of the validation split's scores, so about that share of
in-distribution X-rays is flagged by mistake. ``in_distribution`` is ``ood_score <= threshold``.

The fitted state is plain numbers and tensors: the checkpoint's top-level ``"ood"`` key
(readable with ``weights_only=True``) and an export sidecar's ``"ood"`` key (JSON).
"""

from __future__ import annotations

import base64
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chexnet_pl.errors import ConfigError, WeightsError
from chexnet_pl.validation import Problems, settings_from

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "ood"  # the checkpoint's and the export sidecar's key
METHOD = "mahalanobis"
COVARIANCE = "ledoit-wolf"
SCORE, FLAG = "ood_score", "in_distribution"  # the columns predict and the API add
HOW_TO_FIT = "chexnet-evaluate ckpt=<checkpoint> ood.fit=true (or chexnet_pl.ood.fit_checkpoint)"


@dataclass(frozen=True)
class OodSettings:
    """``ood.*`` (conf/ood/default.yaml): whether training fits the flag, on how many training
    images, and the false-alarm rate its threshold is chosen for on validation."""

    enabled: bool = True
    max_images: int = 10000
    false_alarm_rate: float = 0.05
    fit: bool = False  # chexnet-evaluate only: fit the flag for ckpt= and write a new checkpoint

    def __post_init__(self) -> None:
        problems = Problems("ood")
        problems.flag("enabled", self.enabled)
        problems.flag("fit", self.fit)
        problems.number("max_images", self.max_images, minimum=2, integer=True)
        problems.number("false_alarm_rate", self.false_alarm_rate, minimum=0, maximum=1,
                        exclusive=True)  # fmt: skip
        problems.raise_if_any()

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> OodSettings:
        """The ``ood`` section over the shipped conf/ood/default.yaml (a config written before it
        existed gets the shipped values)."""
        from chexnet_pl.config_defaults import shipped

        try:
            known = shipped("ood")
        except (OSError, KeyError):
            known = {}
        return settings_from(cls, {**known, **dict(section or {})}, "ood")


@dataclass(frozen=True)
class OodState:
    """A fitted flag: ``mean`` (D) and ``precision`` (D × D, the inverse shrunk covariance) of the
    training features, and the validation-chosen ``threshold`` on the distance."""

    mean: np.ndarray
    precision: np.ndarray
    threshold: float
    false_alarm_rate: float
    n_images: int
    n_val: int
    shrinkage: float
    val_flag_rate: float

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def scores(self, features: np.ndarray, source: str | Path = "the model") -> np.ndarray:
        """Mahalanobis distance of each row of ``features`` (N × D) to the training mean."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise WeightsError(
                f"{source}: its OOD state was fitted on {self.dim} features, but the model gives "
                f"{x.shape[-1] if x.ndim else 0}; fit it again for this model: {HOW_TO_FIT}"
            )
        centred = x - self.mean
        squared = np.einsum("nd,de,ne->n", centred, self.precision.astype(np.float64), centred)
        return np.sqrt(np.maximum(squared, 0.0))

    def in_distribution(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) <= self.threshold

    def to_checkpoint(self) -> dict[str, Any]:
        """Plain tensors and numbers, loadable with ``torch.load(weights_only=True)``."""
        import torch

        return {
            "method": METHOD,
            "covariance": COVARIANCE,
            "mean": torch.from_numpy(self.mean.astype(np.float32)),
            "precision": torch.from_numpy(self.precision.astype(np.float32)),
            **self._numbers(),
        }

    def to_sidecar(self) -> dict[str, Any]:
        """JSON: the mean as a list; the D × D precision as little-endian float32, base64."""
        precision = np.ascontiguousarray(self.precision, dtype="<f4")
        return {
            "method": METHOD,
            "covariance": COVARIANCE,
            "mean": [float(v) for v in self.mean.astype(np.float32)],
            "precision": {
                "dtype": "float32-le",
                "shape": list(precision.shape),
                "base64": base64.b64encode(precision.tobytes()).decode("ascii"),
            },
            **self._numbers(),
        }

    def _numbers(self) -> dict[str, Any]:
        return {
            "threshold": float(self.threshold),
            "false_alarm_rate": float(self.false_alarm_rate),
            "n_images": int(self.n_images),
            "n_val": int(self.n_val),
            "shrinkage": float(self.shrinkage),
            "val_flag_rate": float(self.val_flag_rate),
        }

    @classmethod
    def from_stored(cls, stored: Any, source: str | Path) -> OodState:
        """The state of a checkpoint's (tensors) or a sidecar's (lists, base64) ``"ood"`` key,
        checked: a wrong method, shape, or a non-finite value is a ``WeightsError`` naming
        ``source``."""

        def bad(why: str) -> WeightsError:
            return WeightsError(
                f"{source}: its OOD state ('ood') is unusable: {why}; fit it again: {HOW_TO_FIT}"
            )

        if not isinstance(stored, Mapping):
            raise bad(f"a {type(stored).__name__}, not a mapping")
        if stored.get("method") != METHOD:
            raise bad(f"method {stored.get('method')!r}; only {METHOD!r} is known")
        try:
            mean = _array(stored.get("mean"))
            precision = _array(stored.get("precision"))
        except (TypeError, ValueError) as exc:
            raise bad(f"its mean or precision is not an array of numbers ({exc})") from exc
        if mean.ndim != 1 or mean.shape[0] < 1:
            raise bad(f"mean has shape {mean.shape}, not (D,)")
        if precision.shape != (mean.shape[0], mean.shape[0]):
            raise bad(f"precision has shape {precision.shape}, not {(mean.shape[0],) * 2}")
        if not (np.isfinite(mean).all() and np.isfinite(precision).all()):
            raise bad("its mean or precision holds NaN or infinite values")
        numbers = {}
        for key, kind in (("threshold", float), ("false_alarm_rate", float), ("n_images", int),
                          ("n_val", int), ("shrinkage", float), ("val_flag_rate", float)):  # fmt: skip
            value = stored.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise bad(f"{key}={value!r} is not a number")
            if not math.isfinite(value):
                raise bad(f"{key}={value!r} is not finite")
            numbers[key] = kind(value)
        if not 0 < numbers["false_alarm_rate"] < 1 or numbers["threshold"] < 0:
            raise bad(
                f"false_alarm_rate={numbers['false_alarm_rate']} / threshold="
                f"{numbers['threshold']} out of range"
            )
        return cls(mean=mean, precision=precision, **numbers)


def _array(value: Any) -> np.ndarray:
    if isinstance(value, Mapping):  # a sidecar's base64 matrix
        if value.get("dtype") != "float32-le":
            raise ValueError(f"dtype {value.get('dtype')!r}")
        raw = base64.b64decode(str(value.get("base64", "")), validate=True)
        shape = tuple(int(s) for s in value.get("shape", ()))
        return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float64)
    if hasattr(value, "numpy"):  # a tensor
        return value.detach().cpu().double().numpy()
    if value is None:
        raise ValueError("missing")
    return np.asarray(value, dtype=np.float64)


def ledoit_wolf(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean, Ledoit-Wolf shrunk covariance and its shrinkage of N × D ``features`` (float64;
    ``sklearn.covariance.ledoit_wolf``)."""
    from sklearn.covariance import ledoit_wolf as sk_ledoit_wolf

    x = np.asarray(features, dtype=np.float64)
    mean = x.mean(axis=0)
    covariance, shrinkage = sk_ledoit_wolf(x - mean, assume_centered=True)
    return mean, covariance, float(shrinkage)


def fit_state(
    train_features: np.ndarray, val_features: np.ndarray, false_alarm_rate: float = 0.05
) -> OodState:
    """Fit the Gaussian on ``train_features`` and choose the threshold on ``val_features``: the
    ``1 - false_alarm_rate`` quantile of their distances (numpy's ``higher`` method, so at most
    that share of the validation images lies above it)."""
    train = np.asarray(train_features, dtype=np.float64)
    val = np.asarray(val_features, dtype=np.float64)
    if train.ndim != 2 or len(train) < 2:
        raise ConfigError(
            f"the OOD flag needs at least 2 training images' features, got {len(train)}"
        )
    if val.ndim != 2 or len(val) < 1:
        raise ConfigError("the OOD flag's threshold needs the validation split: it has no images")
    if not (np.isfinite(train).all() and np.isfinite(val).all()):
        raise ConfigError("the model's features hold NaN or infinite values; no OOD flag fitted")
    mean, covariance, shrinkage = ledoit_wolf(train)
    precision = np.linalg.pinv(covariance, hermitian=True)
    # Stored as float32: the threshold is chosen on the scores the stored state gives, so a
    # validation image at the threshold stays on its side once the state is read back.
    mean, precision = (a.astype(np.float32).astype(np.float64) for a in (mean, precision))
    partial = OodState(mean, precision, math.inf, false_alarm_rate, len(train), len(val),
                       shrinkage, 0.0)  # fmt: skip
    val_scores = partial.scores(val)
    threshold = float(np.quantile(val_scores, 1.0 - false_alarm_rate, method="higher"))
    return OodState(
        mean, precision, threshold, float(false_alarm_rate), len(train), len(val), shrinkage,
        float(np.mean(val_scores > threshold)),
    )  # fmt: skip


def network_features(network: Any, images: Any) -> np.ndarray:
    """Pooled penultimate features of a uint8 batch (as ``Model.features`` computes them)."""
    import torch

    with torch.inference_mode():
        x = network.prepare_input(images.to(network.device))
        features = network.forward_features(x)
        return network.pre_logits(network.pool(features)).float().cpu().numpy()


def loader_features(network: Any, loader: Iterable, max_images: int | None = None) -> np.ndarray:
    """Features of the images a data module's loader yields (``batch["img"]``), at most
    ``max_images`` of them."""
    rows, count = [], 0
    for batch in loader:
        images = batch["img"]
        if max_images is not None:
            images = images[: max_images - count]
        rows.append(network_features(network, images))
        count += len(images)
        if max_images is not None and count >= max_images:
            break
    return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)


def _spread_subset(loader: Any, max_images: int) -> Any:
    """A loader of ``max_images`` images spread evenly over the split (every k-th in table
    order, so many patients are seen), when the loader is a plain DataLoader; else ``loader``."""
    from torch.utils.data import DataLoader, Subset

    dataset = getattr(loader, "dataset", None)
    if not isinstance(loader, DataLoader) or dataset is None or len(dataset) <= max_images:
        return loader
    indices = np.linspace(0, len(dataset) - 1, max_images).round().astype(int).tolist()
    return DataLoader(Subset(dataset, indices), batch_size=loader.batch_size,
                      num_workers=loader.num_workers)  # fmt: skip


def fit_for(network: Any, datamodule: Any, settings: OodSettings) -> OodState:
    """Fit the flag of ``network`` on its data module's training split (at most
    ``settings.max_images`` images, unaugmented) and choose its threshold on validation."""
    datamodule.setup()
    network.eval()
    train_loader = _spread_subset(datamodule.eval_dataloader("train"), settings.max_images)
    train = loader_features(network, train_loader, settings.max_images)
    val = loader_features(network, datamodule.eval_dataloader("val"))
    state = fit_state(train, val, settings.false_alarm_rate)
    log.info(
        "OOD flag fitted (Mahalanobis, Ledoit-Wolf shrinkage %.3f) on %d training images; "
        "threshold %.3g flags %.1f%% of %d validation images (false_alarm_rate %.3g)",
        state.shrinkage, state.n_images, state.threshold, 100 * state.val_flag_rate,
        state.n_val, state.false_alarm_rate,
    )  # fmt: skip
    return state


def stored_state(checkpoint: Mapping[str, Any], path: str | Path) -> OodState | None:
    """The checkpoint's OOD state, checked; None when it has none."""
    if checkpoint.get(CHECKPOINT_KEY) is None:
        return None
    return OodState.from_stored(checkpoint[CHECKPOINT_KEY], path)


def flag_columns(state: OodState | None, features: np.ndarray | None, n: int,
                 source: str | Path = "the model") -> dict[str, Any]:  # fmt: skip
    """``ood_score`` and ``in_distribution`` of ``n`` images (NaN / NA without a state)."""
    import pandas as pd

    if state is None or features is None:
        return {SCORE: np.full(n, np.nan), FLAG: pd.array([pd.NA] * n, dtype="boolean")}
    scores = state.scores(features, source)
    return {SCORE: scores, FLAG: pd.array(state.in_distribution(scores), dtype="boolean")}


def log_flags(names: Iterable[str], columns: Mapping[str, Any], state: OodState | None,
              source: str | Path) -> None:  # fmt: skip
    """One warning per image flagged out of distribution; one info line when there is no state."""
    if state is None:
        log.info("%s has no OOD flag (ood_score/in_distribution are empty); fit one with %s",
                 source, HOW_TO_FIT)  # fmt: skip
        return
    for name, score, inside in zip(names, columns[SCORE], columns[FLAG], strict=True):
        if not bool(inside):
            log.warning(
                "%s looks out of distribution (ood_score %.3g > threshold %.3g): it is unlike the "
                "training X-rays, so its probabilities may be meaningless", name, score,
                state.threshold,
            )  # fmt: skip
