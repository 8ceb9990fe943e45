"""Conformal "refer": per finding, a positive, negative or refer decision with a guaranteed error.

Class-conditional (Mondrian) split conformal prediction (Vovk et al. 2005, ch. 4.5; Angelopoulos
& Bates 2021, "A gentle introduction to conformal prediction", section 4.1), calibrated on the
validation predictions of an evaluation. For one finding, with ``p`` an image's probability:

- the nonconformity of "positive" is ``1 - p`` and of "negative" is ``p``;
- for each true class ``c`` with ``n_c`` labelled validation images, the threshold is the
  ``k = ceil((n_c + 1)(1 - alpha))``-th smallest nonconformity of those images (``k > n_c``:
  infinite, the class is in every set);
- an image's prediction set holds each class whose nonconformity is at most its threshold. In
  probabilities: "positive" is in the set when ``p >= positive_at`` (the k-th largest probability
  of the validation positives), "negative" when ``p <= negative_at`` (the k-th smallest of the
  validation negatives).

Set ``{positive}`` → "positive", ``{negative}`` → "negative"; both or neither → "refer".

The guarantee (exchangeable images): for each true class ``c``, the probability that a new
image of class ``c`` gets a set without ``c`` is at most ``alpha`` (and at least
``alpha - 1/(n_c + 1)`` when scores have no ties). A positive image is called "negative", or
referred with an empty set, at most ``alpha`` of the time; so is a negative image called
"positive". Images whose set holds both classes are referred too; how many are is the price of
the guarantee (the refer rate, reported beside the error).

Why not crepes or MAPIE: both fit (crepes' ``ConformalClassifier`` takes nonconformity scores
and Mondrian bins), but the rule is the few lines above, its whole state is two numbers per
finding that travel as JSON into exports and the service, and neither library is needed to
apply it; a dependency for one quantile was not worth its weight.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chexnet_pl.errors import DataError
from chexnet_pl.label_sets import label_key, labelled
from chexnet_pl.validation import Problems

log = logging.getLogger(__name__)

CONFORMAL_FILE = "conformal.json"
CONFORMAL_TABLE = "conformal.csv"
FORMAT = "chexnet_pl.conformal/1"
POSITIVE, NEGATIVE, REFER = "positive", "negative", "refer"
DECISIONS = (POSITIVE, NEGATIVE, REFER)
READ_HINT = "give the conformal.json an evaluation wrote (chexnet-evaluate) for this model"


@dataclass(frozen=True)
class ConformalSettings:
    """``evaluation.conformal`` (conf/evaluation/default.yaml): ``enabled`` (calibrated when the
    evaluation has validation predictions) and ``alpha``, the error level in (0, 1)."""

    enabled: bool
    alpha: float

    def __post_init__(self) -> None:
        problems = Problems("evaluation.conformal")
        problems.flag("enabled", self.enabled)
        if problems.number("alpha", self.alpha, minimum=0, maximum=1, exclusive=True):
            object.__setattr__(self, "alpha", float(self.alpha))
        else:
            problems.messages[-1] += (
                " (the error level per true class: 0.1 lets at most 10 % of positives, and of "
                "negatives, be excluded from their prediction set)"
            )
        problems.raise_if_any()


def quantile_rank(n: int, alpha: float) -> int | None:
    """The rank ``k = ceil((n + 1)(1 - alpha))`` of the conformal quantile among ``n`` calibration
    nonconformities (1-based, ascending), or None when ``k > n`` (too few images for ``alpha``:
    the threshold is infinite). A tiny tolerance keeps ``(n + 1)(1 - alpha)`` that is a whole
    number in exact arithmetic from rounding up."""
    k = math.ceil((n + 1) * (1 - alpha) - 1e-9)
    return max(k, 1) if k <= n else None


def class_thresholds(
    scores: np.ndarray, labels: np.ndarray, alpha: float
) -> tuple[float, float, int, int]:
    """One finding's ``(positive_at, negative_at, n_positive, n_negative)`` from its calibration
    probabilities and labels (NaN labels are left out): "positive" is in an image's set when
    ``p >= positive_at``, "negative" when ``p <= negative_at`` (``-inf`` / ``inf``: always)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    known = labelled(labels)
    positives = np.sort(scores[known & (labels > 0.5)])[::-1]  # descending: 1 - p ascending
    negatives = np.sort(scores[known & (labels <= 0.5)])  # ascending: p ascending
    k_pos = quantile_rank(len(positives), alpha)
    k_neg = quantile_rank(len(negatives), alpha)
    positive_at = -math.inf if k_pos is None else float(positives[k_pos - 1])
    negative_at = math.inf if k_neg is None else float(negatives[k_neg - 1])
    return positive_at, negative_at, len(positives), len(negatives)


@dataclass(frozen=True)
class ConformalState:
    """The calibrated rule of every finding (model order), and where it was read from."""

    alpha: float
    class_names: tuple[str, ...]
    positive_at: tuple[float, ...]
    negative_at: tuple[float, ...]
    n_positive: tuple[int, ...]
    n_negative: tuple[int, ...]
    fitted_on: str = "val"
    source: Path | None = field(default=None, compare=False)
    found: str = field(default="", compare=False)
    mapped_through: str = field(default="", compare=False)  # a calibration file's name

    def sets(self, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """N × K booleans: "positive" in the set, "negative" in the set."""
        p = np.asarray(probabilities, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != len(self.class_names):
            raise DataError(
                f"conformal decisions need N × {len(self.class_names)} probabilities "
                f"({list(self.class_names)}), not shape {p.shape}"
            )
        return p >= np.asarray(self.positive_at), p <= np.asarray(self.negative_at)

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        """N × K of "positive", "negative" or "refer" (both classes in the set, or neither)."""
        has_pos, has_neg = self.sets(probabilities)
        out = np.full(has_pos.shape, REFER, dtype=object)
        out[has_pos & ~has_neg] = POSITIVE
        out[has_neg & ~has_pos] = NEGATIVE
        return out

    def decision_columns(self, probabilities: np.ndarray) -> dict[str, np.ndarray]:
        """``{decision_<finding>: N decisions}`` in model order, for a predictions table."""
        decided = self.decide(probabilities)
        return {f"decision_{n}": decided[:, j] for j, n in enumerate(self.class_names)}

    def mapped(self, calibration: Any, file_name: str = "") -> ConformalState:
        """The same rule for calibrated probabilities: thresholds chosen on raw probabilities
        mapped through ``calibration`` (monotone per class), infinite ones kept."""
        names = list(self.class_names)

        def through(values: tuple[float, ...]) -> tuple[float, ...]:
            raw = np.asarray(values, dtype=np.float64)
            finite = np.isfinite(raw)
            mapped = calibration.apply(np.where(finite, raw, 0.5)[None, :], names)[0]
            return tuple(
                float(m) if f else float(r) for r, m, f in zip(raw, mapped, finite, strict=True)
            )

        return replace(
            self, positive_at=through(self.positive_at), negative_at=through(self.negative_at),
            mapped_through=file_name or "a calibration",
        )  # fmt: skip

    @property
    def description(self) -> str:
        """For the log: the file and alpha (and the calibration it was mapped through)."""
        where = f"{self.source} ({self.found})" if self.source else "fitted in memory"
        mapped = f", mapped through {self.mapped_through}" if self.mapped_through else ""
        return f"{where}, alpha={self.alpha:g}{mapped}"

    def to_json(self) -> dict[str, Any]:
        """What ``conformal.json`` (and an export's sidecar ``"conformal"``) holds; an infinite
        threshold is null (the class is in every set)."""

        def number(value: float) -> float | None:
            return None if math.isinf(value) else float(value)

        return {
            "format": FORMAT,
            "method": "class-conditional (Mondrian) split conformal, nonconformity 1-p / p",
            "alpha": self.alpha,
            "fitted_on": self.fitted_on,
            "rule": "positive in the set when p >= positive_at, negative when p <= negative_at "
            "(null: always); {positive} -> positive, {negative} -> negative, else refer",
            "classes": {
                n: {
                    "positive_at": number(self.positive_at[j]),
                    "negative_at": number(self.negative_at[j]),
                    "n_positive": int(self.n_positive[j]),
                    "n_negative": int(self.n_negative[j]),
                }
                for j, n in enumerate(self.class_names)
            },
        }

    def save(self, path: str | Path) -> Path:
        from chexnet_pl.files import write_json_atomic

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, self.to_json(), indent=1)
        return path

    @classmethod
    def from_json(
        cls, data: object, class_names: Sequence[str], where: str = "the conformal state"
    ) -> ConformalState:
        """``to_json``'s output for the model's ``class_names`` (a space or an underscore), checked:
        alpha in (0, 1), every class present with thresholds in [0, 1] or null and whole counts.
        ``DataError`` naming ``where`` otherwise."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DataError(f"{where} is not a conformal file ({FORMAT!r} format); {READ_HINT}")
        alpha = data.get("alpha")
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1:
            raise DataError(f"{where}: alpha={alpha!r} is not a number in (0, 1); {READ_HINT}")
        classes = data.get("classes")
        if not isinstance(classes, dict):
            raise DataError(f"{where} has no 'classes' table; {READ_HINT}")
        by_key = {label_key(str(k)): v for k, v in classes.items()}
        missing = [n for n in class_names if label_key(n) not in by_key]
        if missing:
            raise DataError(
                f"{where} has no conformal thresholds for {missing} (it covers {list(classes)}): "
                f"it was calibrated for another model; {READ_HINT}"
            )
        columns: dict[str, list] = {k: [] for k in ("positive_at", "negative_at", "n_positive",
                                                    "n_negative")}  # fmt: skip
        for name in class_names:
            entry = by_key[label_key(name)]
            if not isinstance(entry, dict):
                raise DataError(
                    f"{where}: the entry of {name} is {entry!r}, not a table; {READ_HINT}"
                )
            for key, infinite in (("positive_at", -math.inf), ("negative_at", math.inf)):
                value = entry.get(key, "missing")
                if value is None:
                    columns[key].append(infinite)
                elif (isinstance(value, bool) or not isinstance(value, int | float)
                      or not 0.0 <= value <= 1.0):  # fmt: skip
                    raise DataError(
                        f"{where}: {name}'s {key} is {value!r}; a probability in [0, 1] or null "
                        f"is needed; {READ_HINT}"
                    )
                else:
                    columns[key].append(float(value))
            for key in ("n_positive", "n_negative"):
                count = entry.get(key)
                if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                    raise DataError(
                        f"{where}: {name}'s {key} is {count!r}, not a count; {READ_HINT}"
                    )
                columns[key].append(count)
        return cls(
            float(alpha), tuple(class_names), tuple(columns["positive_at"]),
            tuple(columns["negative_at"]), tuple(columns["n_positive"]),
            tuple(columns["n_negative"]), str(data.get("fitted_on") or ""),
        )  # fmt: skip

    @classmethod
    def read(
        cls, path: str | Path, class_names: Sequence[str], found: str = "given"
    ) -> ConformalState:
        """A ``conformal.json``, checked (``from_json``); errors name the file."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise DataError(
                f"conformal file not found: {path} (conformal=<an evaluation's {CONFORMAL_FILE}>)"
            )
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(
                f"cannot read {path} as JSON ({type(exc).__name__}: {exc}); {READ_HINT}"
            ) from exc
        return replace(cls.from_json(data, class_names, str(path)), source=path, found=found)


def fit_conformal(
    scores: np.ndarray, labels: np.ndarray, class_names: Sequence[str], alpha: float,
    fitted_on: str = "val",
) -> ConformalState:  # fmt: skip
    """The rule of every finding (columns of ``scores``/``labels``), calibrated at ``alpha``."""
    ConformalSettings(True, alpha)  # alpha outside (0, 1): the settings' own error
    rows = [class_thresholds(scores[:, j], labels[:, j], alpha) for j in range(len(class_names))]
    too_few = [
        f"{n} ({'positives' if r[2] < r[3] else 'negatives'}: {min(r[2], r[3])})"
        for n, r in zip(class_names, rows, strict=True)
        if quantile_rank(r[2], alpha) is None or quantile_rank(r[3], alpha) is None
    ]
    if too_few:
        log.warning(
            "conformal alpha=%g needs at least %d images of each class on %s; these findings "
            "have fewer, so that class is in every set (more refer): %s",
            alpha, math.ceil(1 / alpha - 1), fitted_on, ", ".join(too_few),
        )  # fmt: skip
    return ConformalState(
        float(alpha), tuple(class_names), tuple(r[0] for r in rows), tuple(r[1] for r in rows),
        tuple(r[2] for r in rows), tuple(r[3] for r in rows), fitted_on,
    )  # fmt: skip


def _rates(
    numerators: np.ndarray, denominators: np.ndarray, codes: np.ndarray, resamples: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Ratios sum(numerator)/sum(denominator) (columns), on the data and per patient resample
    (B × columns): per-patient sums weighted by how often the patient was drawn."""
    num_patients = resamples.num_patients
    per_num = np.stack([np.bincount(codes, w, num_patients) for w in numerators.T], axis=1)
    per_den = np.stack([np.bincount(codes, w, num_patients) for w in denominators.T], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        point = per_num.sum(0) / np.where(per_den.sum(0) > 0, per_den.sum(0), np.nan)
        draws = []
        for counts in resamples.blocks():  # patients × B
            top, bottom = counts.T @ per_num, counts.T @ per_den
            draws.append(top / np.where(bottom > 0, bottom, np.nan))
    return point, np.concatenate(draws) if draws else np.empty((0, len(point)))


def conformal_report(
    state: ConformalState,
    scores: np.ndarray,
    labels: np.ndarray,
    patients: np.ndarray,
    samples: int,
    seed: int,
    confidence: float,
) -> pd.DataFrame:
    """Per finding, on the scored split: images per true class, the error per true class (the
    share of its images whose prediction set excludes it — what ``alpha`` bounds), the refer
    rate (of all images), the decided shares, each with a patient-bootstrap percentile interval."""
    from chexnet_pl.evaluation.resampling import PatientResamples, percentile_interval

    has_pos, has_neg = state.sets(scores)
    labels = np.asarray(labels, dtype=np.float64)
    known = labelled(labels)
    positive = known & (labels > 0.5)
    negative = known & (labels <= 0.5)
    refer = has_pos == has_neg
    numerators = np.hstack([positive & ~has_pos, negative & ~has_neg, refer]).astype(np.float64)
    denominators = np.hstack([positive, negative, np.ones_like(refer)]).astype(np.float64)
    resamples = PatientResamples.of(patients, samples, seed)
    point, draws = _rates(numerators, denominators, resamples.codes, resamples)
    low, high = percentile_interval(draws, confidence, ~np.isnan(point))
    k = len(state.class_names)
    table = pd.DataFrame(
        {
            "alpha": state.alpha,
            "positive_at": state.positive_at,
            "negative_at": state.negative_at,
            "n_positive": positive.sum(0),
            "n_negative": negative.sum(0),
        },
        index=pd.Index(list(state.class_names), name="finding"),
    )
    for i, name in enumerate(("error_positive", "error_negative", "refer_rate")):
        columns = slice(i * k, (i + 1) * k)
        table[name] = point[columns]
        table[f"{name}_ci_low"] = low[columns]
        table[f"{name}_ci_high"] = high[columns]
    decided = state.decide(scores)
    table["positive_rate"] = (decided == POSITIVE).mean(0)
    table["negative_rate"] = (decided == NEGATIVE).mean(0)
    # JSON-like nulls for the infinite thresholds ("always in the set"): blank in the CSV
    table[["positive_at", "negative_at"]] = table[["positive_at", "negative_at"]].replace(
        [np.inf, -np.inf], np.nan
    )
    return table


def find_conformal(
    checkpoint: str | Path, given: str | Path | None, class_names: Sequence[str]
) -> ConformalState | None:
    """The conformal rule by the operating thresholds' rule (``evaluation.thresholds``):
    ``conformal=<file>`` when given; else the ``conformal.json`` beside the checkpoint or in its
    run folder; else None (no decisions; said once in the log)."""
    if given:
        state = ConformalState.read(given, class_names, "given as conformal=")
    else:
        checkpoint = Path(checkpoint).expanduser()
        for folder, found in ((checkpoint.parent, "beside the checkpoint"),
                              (checkpoint.parent.parent, "in the checkpoint's run folder")):  # fmt: skip
            if (folder / CONFORMAL_FILE).is_file():
                state = ConformalState.read(folder / CONFORMAL_FILE, class_names, found)
                break
        else:
            log.info(
                "no %s beside %s or in its run folder, and no conformal= given: no "
                "positive/negative/refer decisions (chexnet-evaluate writes one)",
                CONFORMAL_FILE, checkpoint,
            )  # fmt: skip
            return None
    log.info("conformal decisions from %s", state.description)
    return state


def with_calibration(
    state: ConformalState | None, calibration: Any, file_name: str = ""
) -> ConformalState | None:
    """``state`` for calibrated probabilities (``calibration`` None: unchanged)."""
    if state is None or calibration is None:
        return state
    return state.mapped(calibration, file_name)


def write_conformal(
    settings: ConformalSettings,
    val_scores: np.ndarray | None,
    val_labels: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    patients: np.ndarray,
    names: Sequence[str],
    output_dir: Path,
    samples: int,
    seed: int,
    confidence: float,
) -> str:
    """Calibrate on the validation predictions (``val_scores``; None: there are none, nothing is
    written), write ``conformal.json`` and the scored split's ``conformal.csv``; returns the
    report's line for the log ("" when nothing was written)."""
    if not settings.enabled:
        return ""
    if val_scores is None:
        log.info(
            "no validation predictions: no conformal decisions (evaluation.conformal needs them)"
        )
        return ""
    state = fit_conformal(val_scores, val_labels, names, settings.alpha)
    state.save(output_dir / CONFORMAL_FILE)
    table = conformal_report(state, scores, labels, patients, samples, seed, confidence)
    from chexnet_pl.files import write_csv_atomic

    write_csv_atomic(table, output_dir / CONFORMAL_TABLE)
    lines = [
        f"  {n}: error on positives {r.error_positive:.3f}, on negatives {r.error_negative:.3f}, "
        f"refer {r.refer_rate:.3f}"
        for n, r in table.iterrows()
    ]
    return (
        f"conformal refer at alpha={settings.alpha:g} (calibrated on validation; "
        f"{CONFORMAL_FILE}, {CONFORMAL_TABLE}):\n" + "\n".join(lines)
    )


def add_decisions(table: pd.DataFrame, state: ConformalState | None) -> pd.DataFrame:
    """``table`` (with ``prob_<finding>`` columns) with ``decision_<finding>`` (positive,
    negative or refer) added after them; unchanged when ``state`` is None."""
    if state is None or table.empty:
        return table
    probabilities = table[[f"prob_{n}" for n in state.class_names]].to_numpy(np.float64)
    return table.assign(**state.decision_columns(probabilities))
