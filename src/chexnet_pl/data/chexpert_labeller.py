"""What the datasets labelled from their reports by the CheXpert labeller (or NegBio) share —
CheXpert and MIMIC-CXR-JPG: the labeller's 14 labels under an uncertainty policy, a split method
and a view filter."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chexnet_pl.data.datamodule import ChestXrayDataModule
from chexnet_pl.data.settings import VIEWS
from chexnet_pl.data.splits import SPLIT_METHODS
from chexnet_pl.data.uncertainty import UncertaintyPolicy, ordered_labels
from chexnet_pl.errors import DataError
from chexnet_pl.validation import Problems


class LabellerDataModule(ChestXrayDataModule):
    """A dataset labelled by the CheXpert labeller; a subclass reads its tables.

    Args:
        include_no_finding: 14 outputs (13 findings + No Finding) when true, else 13.
        split: ``method`` (official | patient | file) and the dataset's own split settings.
        view_position: frontal (default) | lateral | all | PA | AP.
        uncertain / uncertain_by_label / not_mentioned: see ``data.uncertainty``.
        The other arguments are ``ChestXrayDataModule``'s.
    """

    def __init__(
        self,
        root: str,
        include_no_finding: bool,
        split: Mapping[str, Any] | None,
        view_position: str,
        uncertain: str,
        uncertain_by_label: Mapping[str, str] | None,
        not_mentioned: str,
        **settings: Any,
    ) -> None:
        super().__init__(root, **settings)  # judges the shared settings and view_position first
        self.split_args = dict(split or {})
        if self.split_args.get("method", "official") not in SPLIT_METHODS:
            raise DataError(
                f"data.split.method={self.split_args.get('method')!r}; use one of {SPLIT_METHODS}"
            )
        self.policy = UncertaintyPolicy(uncertain, dict(uncertain_by_label or {}), not_mentioned)
        self.pathologies = ordered_labels(include_no_finding)
        self.view_position = view_position

    def check_settings(self, settings: Mapping[str, Any], problems: Problems) -> None:
        problems.choice("view_position", settings["view_position"], VIEWS)
