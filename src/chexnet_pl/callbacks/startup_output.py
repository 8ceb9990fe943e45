"""Lightning's start-of-training output without what means nothing to a user of this project:
an advertisement for its cloud logger, its "GPU available / TPU available" lines (the run says
its device and precision itself), a "Total FLOPs: 0" (Lightning counts FLOPs only for modules
that define an example input), metric objects listed as layers of the model, a warning that the
summary's size assumes 32 bits, and one that a small dataset has fewer batches per epoch than
``log_every_n_steps`` (the epoch's values are logged at its end all the same)."""

from __future__ import annotations

import logging
import warnings
from typing import Any

from pytorch_lightning.callbacks import ModelSummary

log = logging.getLogger(__name__)

TIP_PREFIX = "💡 Tip:"
# Lightning's device lines ("GPU available: False, used: False", "TPU available: ...").
DROPPED_PREFIXES = (TIP_PREFIX, "GPU available:", "TPU available:", "HPU available:")
RANK_ZERO_LOGGER = "pytorch_lightning.utilities.rank_zero"
SMALL_DATA_WARNING = r"The number of training batches .* is smaller than the logging interval"


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(DROPPED_PREFIXES)


def quiet_lightning() -> None:
    """Drop Lightning's tips from its log, and its model-summary precision warning (idempotent)."""
    rank_zero = logging.getLogger(RANK_ZERO_LOGGER)
    if not any(isinstance(f, _DropTips) for f in rank_zero.filters):
        rank_zero.addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=r"Precision .* is not supported by the model summary")
    warnings.filterwarnings("ignore", message=SMALL_DATA_WARNING)


class ParameterSummary(ModelSummary):
    """The model summary (each top-level module: type, parameters, mode, and the totals), logged
    as one block, without FLOPs columns that would all read 0 and without the metric objects
    (torchmetrics), which are no layers."""

    def _summary(self, trainer: Any, pl_module: Any) -> Any:
        from torchmetrics import Metric, MetricCollection

        summary = super()._summary(trainer, pl_module)
        layers = getattr(summary, "_layer_summary", None)
        if isinstance(layers, dict):
            summary._layer_summary = {
                name: layer for name, layer in layers.items()
                if not isinstance(layer._module, Metric | MetricCollection)
            }  # fmt: skip
        return summary

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int = 0,
        **summarize_kwargs: Any,
    ) -> None:
        columns = [
            (name, values) for name, values in summary_data if name != "FLOPs" or total_flops
        ]
        rows = len(columns[0][1]) if columns else 0
        widths = [max([len(name), *(len(str(v)) for v in values)]) for name, values in columns]
        lines = [" | ".join(name.ljust(w) for (name, _), w in zip(columns, widths, strict=True))]
        lines.append("-" * len(lines[0]))
        for i in range(rows):
            lines.append(
                " | ".join(
                    str(values[i]).ljust(w) for (_, values), w in zip(columns, widths, strict=True)
                )
            )
        lines.append("-" * len(lines[0]))
        lines.append(
            f"{trainable_parameters / 1e6:.1f} M trainable parameters, "
            f"{(total_parameters - trainable_parameters) / 1e6:.1f} M frozen; "
            f"{model_size:.1f} MB as 32-bit weights"
        )
        if total_flops:
            lines.append(f"{total_flops:,} FLOPs per forward pass")
        log.info("model:\n%s", "\n".join(lines))
