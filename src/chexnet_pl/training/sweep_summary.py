"""A Hydra callback that keeps ``<sweep dir>/summary.csv`` up to date as multirun jobs finish.

Each job leaves ``<sweep>/summary/<job number>.json`` (a job on a cluster node writes only its
own file), and the CSV is rebuilt from all of them, best first by each run's checkpoint monitor
in its direction (highest ``val/auroc``, lowest ``val/loss``), so a sweep that partly failed
still reports the runs that succeeded and names the ones that failed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from chexnet_pl.files import write_csv_atomic, write_json_atomic
from chexnet_pl.training.run_summary import RUN_SUMMARY

if TYPE_CHECKING:  # every command's Hydra callbacks import this module: pandas only in a sweep
    import pandas as pd

log = logging.getLogger(__name__)

COLUMNS = [
    "job",
    "status",
    "overrides",
    "monitor",
    "mode",
    "best_monitor",
    "best_val_auroc",
    "best_epoch",
    "checkpoint",
    "output_dir",
    "error",
]


def write_summary(sweep_dir: Path) -> pd.DataFrame:
    import pandas as pd

    rows = [json.loads(p.read_text()) for p in sorted((sweep_dir / "summary").glob("*.json"))]
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["_failed"] = table["status"] != "COMPLETED"
    # Best first in the monitor's own direction: a loss ranks lowest first, an AUROC highest.
    best = pd.to_numeric(table["best_monitor"], errors="coerce").combine_first(
        pd.to_numeric(table["best_val_auroc"], errors="coerce")  # summaries written before
    )
    table["_rank"] = best.where(table["mode"] == "min", -best)
    table = table.sort_values(
        ["_failed", "_rank", "job"], ascending=[True, True, True], na_position="last"
    )
    table = table.drop(columns=["_failed", "_rank"])
    write_csv_atomic(table, sweep_dir / "summary.csv", index=False)
    return table


def format_summary(table: pd.DataFrame) -> str:
    shown = table[["job", "status", "monitor", "best_monitor", "best_epoch", "overrides"]]
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-")


class SweepSummary(Callback):
    """Registered in ``conf/hydra/default.yaml``; does nothing outside ``-m`` (multirun)."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        output_dir = Path(config.hydra.runtime.output_dir)
        row: dict[str, Any] = {
            "job": int(config.hydra.job.num),
            "status": job_return.status.name,
            "overrides": " ".join(config.hydra.overrides.task),
            "output_dir": str(output_dir),
        }
        if job_return.status == JobStatus.FAILED:
            error = job_return._return_value
            row["error"] = f"{type(error).__name__}: {error}"
        summary = output_dir / RUN_SUMMARY
        if summary.is_file():
            row.update(json.loads(summary.read_text()))
        (sweep_dir / "summary").mkdir(parents=True, exist_ok=True)
        write_json_atomic(sweep_dir / "summary" / f"{row['job']:04d}.json", row)
        # Printed after every job: a sweep with a failed job ends in an exception, with no
        # on_multirun_end, and the table must still be seen.
        log.info(
            "sweep summary so far (%s):\n%s",
            sweep_dir / "summary.csv",
            format_summary(write_summary(sweep_dir)),
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not (sweep_dir / "summary").is_dir():
            return
        table = write_summary(sweep_dir)
        failed = table.loc[table["status"] != "COMPLETED", "overrides"].tolist()
        log.info("sweep summary (%s):\n%s", sweep_dir / "summary.csv", format_summary(table))
        if failed:
            log.warning("%d run(s) failed: %s", len(failed), failed)
