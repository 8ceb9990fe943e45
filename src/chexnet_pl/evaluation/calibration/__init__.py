"""Calibration: per-class temperature / Platt scaling fitted on validation predictions, and the
file that carries it (how well calibrated a model is: ``calibration.report``).

Both scalings act on the logit z of a probability: Platt ``σ(a·z + b)``, temperature ``σ(z / T)``
(``a = 1/T``, ``b = 0``). Both are a one-feature logistic regression (scikit-learn), with or
without intercept; the parameters are written as JSON that ``predict``, ``visualize`` and
``serve`` read with ``calibration=<file>``, each through ``Calibration.read``, which checks the
file (finite numbers, positive temperatures, the model's classes) before any image is read.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from chexnet_pl.errors import DataError
from chexnet_pl.files import write_json_atomic
from chexnet_pl.label_sets import labelled
from chexnet_pl.validation import Problems

log = logging.getLogger(__name__)

CALIBRATION_METHODS = ("none", "temperature", "platt")
_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] before the logit
FORMAT = "chexnet_pl.calibration/1"
READ_HINT = "give the calibration.json of an evaluation run with evaluation.calibrate="


@dataclass(frozen=True)
class CalibrationSettings:
    """``evaluation.calibrate`` and ``evaluation.calibration_bins`` (conf/evaluation/default.yaml)."""

    method: str
    bins: int

    def __post_init__(self) -> None:
        problems = Problems("evaluation")
        problems.choice("calibrate", self.method, CALIBRATION_METHODS)
        problems.number("calibration_bins", self.bins, minimum=1, integer=True)
        problems.raise_if_any()


def logit(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


@dataclass
class Calibration:
    """Per-class ``σ(slope · logit(p) + intercept)``."""

    method: str
    class_names: list[str]
    slope: np.ndarray
    intercept: np.ndarray
    fitted_on: str = ""
    path: Path | None = field(default=None, compare=False)

    def apply(self, probabilities: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
        """Calibrated probabilities for columns ``class_names`` (each must be in this file)."""
        index = self._index(class_names)
        z = logit(probabilities) * self.slope[index] + self.intercept[index]
        return 1.0 / (1.0 + np.exp(-z))

    def _index(self, class_names: Sequence[str]) -> list[int]:
        missing = [n for n in class_names if n not in self.class_names]
        if missing:
            where = f" ({self.path})" if self.path else ""
            raise DataError(
                f"the calibration{where} has no parameters for {missing}; it covers "
                f"{self.class_names}. Use the calibration.json of an evaluation of this model"
            )
        return [self.class_names.index(n) for n in class_names]

    @property
    def label(self) -> str:
        """What the prediction tables say: the method and the file."""
        return f"{self.method} ({self.path.name})" if self.path else self.method

    def to_json(self) -> dict:
        classes = {}
        for name, a, b in zip(self.class_names, self.slope, self.intercept, strict=True):
            entry = {"slope": float(a), "intercept": float(b)}
            if self.method == "temperature":
                entry = {"temperature": float(1 / a) if a > 0 else None, **entry}
            classes[name] = entry
        return {"format": FORMAT, "method": self.method, "fitted_on": self.fitted_on,
                "formula": "sigmoid(slope * logit(p) + intercept)", "classes": classes}  # fmt: skip

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, self.to_json(), indent=1)
        return path

    @classmethod
    def read(cls, path: str | Path, class_names: Sequence[str] | None = None) -> Calibration:
        """Read a calibration file an evaluation wrote, checked before use (``from_json``)."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise DataError(f"calibration file not found: {path} (calibration=)")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(
                f"{path} is not a calibration file an evaluation wrote ({type(exc).__name__}: "
                f"{exc}); {READ_HINT}"
            ) from exc
        return cls.from_json(data, path, class_names)

    @classmethod
    def from_json(
        cls, data: object, path: Path | None = None, class_names: Sequence[str] | None = None
    ) -> Calibration:
        """``to_json``'s output, checked: finite numbers, a positive temperature that agrees with
        the slope (a Platt file has none), and (given the model's ``class_names``) exactly the
        model's classes. Errors name the file (``path``),
        the class and the value."""
        where = path or "the calibration"
        try:
            classes, method = data["classes"], data["method"]  # type: ignore[index]
            entries = {str(n): dict(classes[n]) for n in classes}
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"{where} is not a calibration file an evaluation wrote ({type(exc).__name__}: "
                f"{exc}); {READ_HINT}"
            ) from exc
        if data.get("format", FORMAT) != FORMAT or method not in CALIBRATION_METHODS[1:]:
            raise DataError(
                f"{where}: format {data.get('format')!r}, method {method!r}: not a calibration "
                f"this version reads (format {FORMAT}, method one of {CALIBRATION_METHODS[1:]}); "
                f"{READ_HINT}"
            )
        slope = np.array([_parameter(where, n, e, "slope") for n, e in entries.items()])
        intercept = np.array([_parameter(where, n, e, "intercept") for n, e in entries.items()])
        if method == "temperature":
            for (name, entry), a, b in zip(entries.items(), slope, intercept, strict=True):
                temperature = 1 / a if a > 0 else None
                if "temperature" in entry:
                    temperature = _parameter(where, name, entry, "temperature")
                if a <= 0 or temperature is None or temperature <= 0 or b != 0:
                    raise DataError(
                        f"{where}: class {name!r} has temperature {entry.get('temperature')}, "
                        f"slope {a:g}, intercept {b:g}; temperature scaling needs a positive "
                        f"temperature (slope = 1/temperature, intercept 0); {READ_HINT}"
                    )
                if not math.isclose(temperature * a, 1.0, rel_tol=1e-6):
                    raise DataError(
                        f"{where}: class {name!r} has temperature {temperature:g} but slope {a:g} "
                        f"(that is temperature {1 / a:g}): the method's fields disagree (slope = "
                        f"1/temperature), so the file was edited or damaged; {READ_HINT}"
                    )
        else:
            stray = [name for name, entry in entries.items() if "temperature" in entry]
            if stray:
                raise DataError(
                    f"{where}: method {method!r}, but class(es) {stray} have a temperature: a "
                    f"{method} calibration is a slope and an intercept; the file was edited or "
                    f"damaged; {READ_HINT}"
                )
        fitted_on = str(data.get("fitted_on", ""))
        calibration = cls(method, list(entries), slope, intercept, fitted_on, path)
        if class_names is not None:
            calibration.check_classes(class_names)
        return calibration

    def check_classes(self, class_names: Sequence[str]) -> None:
        """The file must hold exactly the model's classes: one it lacks cannot be calibrated, and
        one the model does not have says it was fitted for another model."""
        self._index(class_names)
        unknown = [n for n in self.class_names if n not in class_names]
        if unknown:
            where = f" ({self.path})" if self.path else ""
            raise DataError(
                f"the calibration{where} has classes this model does not output: {unknown} (the "
                f"model's: {list(class_names)}). Use the calibration.json of an evaluation of "
                "this model"
            )


def _parameter(where: object, name: str, entry: dict, key: str) -> float:
    """One finite number of a class's entry, or a DataError naming the file, class and value."""
    value = entry.get(key)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise DataError(
            f"{where}: class {name!r} has {key} {value!r}, not a finite number; the file is "
            "damaged or was not written by an evaluation: evaluate again with "
            "evaluation.calibrate="
        )
    return number


def fit_calibration(
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    method: str,
    fitted_on: str = "val",
) -> Calibration:
    """Per class, temperature (no intercept) or Platt (slope and intercept) by maximum likelihood
    on these predictions (each class on its labelled images). A class without positives or
    negatives keeps the identity."""
    from sklearn.linear_model import LogisticRegression

    if method not in CALIBRATION_METHODS[1:]:
        raise DataError(f"evaluation.calibrate={method!r}; use one of {CALIBRATION_METHODS}")
    slope, intercept = np.ones(len(class_names)), np.zeros(len(class_names))
    identity = []
    for j, name in enumerate(class_names):
        known = labelled(labels[:, j])
        positive = labels[known, j] > 0.5
        if positive.all() or not positive.any():
            identity.append(name)
            continue
        # C large: effectively unregularised maximum likelihood, as temperature / Platt scaling.
        model = LogisticRegression(C=1e6, fit_intercept=method == "platt", max_iter=1000)
        model.fit(logit(scores[known, j])[:, None], positive.astype(int))
        fitted = float(model.coef_[0, 0])
        if fitted <= 0 and method == "temperature":  # no temperature gives that: left as is
            log.warning(
                "%s: the fitted slope is %.3f (not positive), which no temperature gives: its "
                "scores do not rank cases on %s; left uncalibrated", name, fitted, fitted_on,
            )  # fmt: skip
            continue
        slope[j] = fitted
        intercept[j] = float(model.intercept_[0]) if method == "platt" else 0.0
        if slope[j] <= 0:
            log.warning(
                "%s: the fitted %s slope is %.3f (not positive): its scores do not rank cases "
                "on %s; calibrated probabilities will reverse its order", name, method, slope[j],
                fitted_on,
            )  # fmt: skip
    if identity:
        log.warning(
            "no positives or no negatives on %s for %s: left uncalibrated", fitted_on, identity
        )
    return Calibration(method, list(class_names), slope, intercept, fitted_on)
