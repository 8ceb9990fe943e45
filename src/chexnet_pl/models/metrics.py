"""Exact multilabel AUROC per class, undefined (NaN) where a class lacks positives or negatives."""

from __future__ import annotations

import warnings

import torch
from torchmetrics.classification import MultilabelAUROC
from torchmetrics.utilities import dim_zero_cat

from chexnet_pl.label_sets import finding_names

IGNORE = -1  # the target of a label that is not known (NaN in the data)


class PerClassAUROC(MultilabelAUROC):
    """torchmetrics' exact (``thresholds=None``) multilabel AUROC, one value per class.

    torchmetrics returns 0 for a class with no positives; that is not a score, so such
    classes come out as NaN here and are left out of the mean. A target of ``IGNORE`` (a label
    not known for that image) is left out of its class.
    """

    def __init__(self, num_labels: int, **kwargs) -> None:
        # torchmetrics takes two labels or more: a one-label dataset (RSNA's Lung Opacity, SIIM's
        # Pneumothorax) is scored with its column twice, the copy dropped from the result.
        super().__init__(
            num_labels=max(num_labels, 2), average=None, thresholds=None, ignore_index=IGNORE,
            **kwargs,
        )  # fmt: skip
        self.labels_scored = num_labels

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if self.labels_scored == 1:
            preds, target = preds.repeat(1, 2), target.repeat(1, 2)
        super().update(preds, target)

    def compute(self) -> torch.Tensor:
        target = dim_zero_cat(self.target)
        positives = (target == 1).sum(0)
        negatives = (target == 0).sum(0)
        defined = (positives > 0) & (negatives > 0)
        if not defined.any():
            return torch.full((self.labels_scored,), float("nan"), device=target.device)
        with warnings.catch_warnings():  # "no positive samples": handled as NaN below
            warnings.simplefilter("ignore", UserWarning)
            values = super().compute().float()
        values = torch.where(defined, values, torch.full_like(values, float("nan")))
        return values[: self.labels_scored]


def mean_finding_auroc(per_class: torch.Tensor, class_names: list[str]) -> torch.Tensor:
    """Mean over the findings (never ``No Finding``), ignoring undefined classes."""
    findings = finding_names(class_names)
    index = [i for i, name in enumerate(class_names) if name in findings]
    values = per_class[index]
    return values.nanmean() if not torch.isnan(values).all() else values.new_tensor(float("nan"))
