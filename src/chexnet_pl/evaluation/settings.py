"""``evaluation.*``: the settings of every evaluation (after training and ``chexnet-evaluate``),
judged once when built. They and their defaults are the keys of ``conf/evaluation/default.yaml``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from chexnet_pl.config_defaults import shipped
from chexnet_pl.errors import ConfigError
from chexnet_pl.evaluation.calibration import CalibrationSettings
from chexnet_pl.evaluation.conformal import ConformalSettings
from chexnet_pl.evaluation.predictions import TTA_MODES
from chexnet_pl.evaluation.report import THRESHOLD_METHODS
from chexnet_pl.evaluation.stratified import stratify_problems
from chexnet_pl.evaluation.subgroups.labels import Subgroups
from chexnet_pl.files import FIGURE_FORMATS
from chexnet_pl.models.precision import check_precision
from chexnet_pl.validation import Problems, Section, settings_from


class EvaluationSettings(Section):
    """``evaluation.*``: an attribute per key of conf/evaluation/default.yaml (the settings and
    their defaults: a new setting is a line there), the values judged in ``check``, once, when
    built — by ``train`` and ``evaluate`` before any work, by their pre-flight check.

    ``label_map``: output name ↔ label name where two label sets spell a finding differently
    (both ways), how a model is scored on another dataset and pooled datasets' labels merged;
    ``label_map_shared``: several outputs onto one label of the map are meant; ``stratify``: the
    shortcut audit's pairs (``auto``, ``[]`` or ``[[finding, covariate], ...]``:
    ``evaluation.stratified``); ``conformal``: ``{enabled, alpha}`` of the positive/negative/refer
    rule (``evaluation.conformal``)."""

    prefix = "evaluation"

    def check(self, problems: Problems) -> None:
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
        for message in stratify_problems(self.stratify):
            problems.add(message)
        if self.stratify != "auto" and not problems:
            self.stratify = tuple(tuple(p) for p in self.stratify)
        for key in ("subgroups", "age_bands"):  # lists from the config, tuples once built
            value = getattr(self, key)
            if isinstance(value, Sequence) and not isinstance(value, str):
                setattr(self, key, tuple(value))
        label_map = self.label_map or {}
        if not isinstance(label_map, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in label_map.items()
        ):
            problems.add(
                f"evaluation.label_map={label_map!r}; give names to names, e.g. "
                "{Effusion: Pleural Effusion}"
            )
        else:
            self.label_map = dict(label_map)
        for built in ("subgroup_spec", "calibration", "conformal_settings"):
            try:
                getattr(self, built)
            except ConfigError as exc:
                problems.extend(exc)

    @property
    def conformal_settings(self) -> ConformalSettings:
        """``evaluation.conformal`` (a key the config leaves out: its shipped value)."""
        if not isinstance(self.conformal, Mapping):
            raise ConfigError(
                f"evaluation.conformal={self.conformal!r}; give {{enabled: true, alpha: 0.1}}"
            )
        values = {**shipped("evaluation")["conformal"], **dict(self.conformal)}
        return settings_from(ConformalSettings, values, "evaluation.conformal")

    @property
    def subgroup_spec(self) -> Subgroups:
        return Subgroups.from_settings(self)

    @property
    def calibration(self) -> CalibrationSettings:
        return CalibrationSettings(self.calibrate, self.calibration_bins)

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> EvaluationSettings:
        """The ``evaluation`` section over the shipped ``conf/evaluation/default.yaml`` (a config
        written before a setting existed gets that setting's shipped value); unknown and bad
        values in one ``ConfigError``."""
        return cls.build(section, shipped("evaluation"))
