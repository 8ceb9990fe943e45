"""``evaluation.*``: the settings of every evaluation (after training and ``chexnet-evaluate``),
judged once when built. Their defaults are in ``conf/evaluation/default.yaml`` only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chexnet_pl.config_defaults import shipped
from chexnet_pl.errors import ConfigError
from chexnet_pl.evaluation.calibration import CalibrationSettings
from chexnet_pl.evaluation.predictions import TTA_MODES
from chexnet_pl.evaluation.report import THRESHOLD_METHODS
from chexnet_pl.evaluation.subgroup_labels import Subgroups
from chexnet_pl.files import FIGURE_FORMATS
from chexnet_pl.models.precision import check_precision
from chexnet_pl.validation import Problems, settings_from


@dataclass(frozen=True)
class EvaluationSettings:
    """``evaluation.*`` (conf/evaluation/default.yaml, where every default is): judged here,
    once, when built — by ``train`` and ``evaluate`` before any work, by their pre-flight check."""

    tta: str
    threshold: str
    bootstrap_samples: int
    bootstrap_seed: int
    confidence: float
    precision: str
    plots: bool
    figure_format: str
    subgroups: Sequence[str]
    age_bands: Sequence[int]
    max_age: int
    min_subgroup_images: int
    min_subgroup_positives: int
    underdiagnosis_threshold: str
    calibrate: str
    calibration_bins: int
    # Output name ↔ label name where two label sets spell a finding differently (both ways):
    # how a model is scored on another dataset, and how pooled datasets' labels are merged.
    label_map: Mapping[str, str] | None
    # Several outputs onto one label of the map (e.g. {Mass: Lung Lesion, Nodule: Lung Lesion}):
    # refused unless this says it is meant.
    label_map_shared: bool

    def __post_init__(self) -> None:
        problems = Problems("evaluation")
        problems.choice("tta", self.tta, TTA_MODES)
        problems.choice("threshold", self.threshold, THRESHOLD_METHODS)
        try:
            check_precision(self.precision, "evaluation.precision")
        except ConfigError as exc:
            problems.extend(exc)
        problems.number("bootstrap_samples", self.bootstrap_samples, minimum=0, integer=True)
        problems.number("bootstrap_seed", self.bootstrap_seed, minimum=0, integer=True)
        problems.number("confidence", self.confidence, minimum=0, maximum=1, exclusive=True)
        problems.flag("plots", self.plots)
        problems.choice("figure_format", self.figure_format, FIGURE_FORMATS)
        problems.flag("label_map_shared", self.label_map_shared)
        for key in ("subgroups", "age_bands"):  # lists from the config, tuples once built
            value = getattr(self, key)
            if isinstance(value, Sequence) and not isinstance(value, str):
                object.__setattr__(self, key, tuple(value))
        label_map = self.label_map or {}
        if not isinstance(label_map, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in label_map.items()
        ):
            problems.add(
                f"evaluation.label_map={label_map!r}; give names to names, e.g. "
                "{Effusion: Pleural Effusion}"
            )
        else:
            object.__setattr__(self, "label_map", dict(label_map))
        for build in (self._subgroup_spec, self._calibration):
            try:
                build()
            except ConfigError as exc:
                problems.extend(exc)
        problems.raise_if_any()

    def _subgroup_spec(self) -> Subgroups:
        return Subgroups.from_settings(self)

    def _calibration(self) -> CalibrationSettings:
        return CalibrationSettings(self.calibrate, self.calibration_bins)

    @property
    def subgroup_spec(self) -> Subgroups:
        return self._subgroup_spec()

    @property
    def calibration(self) -> CalibrationSettings:
        return self._calibration()

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> EvaluationSettings:
        """The ``evaluation`` section over the shipped ``conf/evaluation/default.yaml`` (a config
        written before a setting existed gets that setting's shipped value); unknown and bad
        values in one ``ConfigError``."""
        values = {**shipped("evaluation"), **dict(section or {})}
        return settings_from(cls, values, "evaluation")
