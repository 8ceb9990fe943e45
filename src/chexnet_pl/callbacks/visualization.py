"""After each validation epoch: heat-map overlays and prediction tables for a fixed, seeded set
of validation images, written to ``<run>/visualizations/epoch_NNN/`` and logged to W&B."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from chexnet_pl.data.images import read_gray
from chexnet_pl.model_identity import data_source, of_model, training_recipe
from chexnet_pl.validation import Problems
from chexnet_pl.visualization.explain import XRay, explain
from chexnet_pl.visualization.heatmaps import METHODS

log = logging.getLogger(__name__)


class VisualizationCallback(pl.Callback):
    """``n_images`` validation images, chosen once (seeded) as positives of different findings.

    Each image's overlay shows its most probable finding (``method``: ``auto`` is ``cam`` where
    the backbone's head allows it — one forward pass for all classes — else Grad-CAM; any
    ``grad-cam`` method works too).
    """

    def __init__(
        self, dirpath: str, n_images: int, method: str, every_n_epochs: int, seed: int
    ) -> None:
        problems = Problems("callbacks.visualization")
        problems.choice("method", method, METHODS)
        problems.number("n_images", n_images, minimum=0, integer=True)
        problems.number("every_n_epochs", every_n_epochs, minimum=1, integer=True)
        problems.number("seed", seed, integer=True)
        problems.raise_if_any()
        self.dirpath = Path(dirpath)
        self.n_images = n_images
        self.method = method
        self.every_n_epochs = every_n_epochs
        self.seed = seed
        self._rows: list[int] | None = None

    def _choose(self, dataset) -> list[int]:
        """Positives of as many different findings as possible, then anything, seeded."""
        rng = np.random.default_rng(self.seed)
        labels = dataset.labels
        chosen: list[int] = []
        for k in rng.permutation(labels.shape[1]):
            positives = [i for i in np.flatnonzero(labels[:, k] > 0.5) if i not in chosen]
            if positives and len(chosen) < self.n_images:
                chosen.append(int(rng.choice(positives)))
        rest = [i for i in rng.permutation(len(dataset)) if i not in chosen]
        return chosen + [int(i) for i in rest[: self.n_images - len(chosen)]]

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (
            trainer.sanity_checking
            or self.n_images <= 0
            or trainer.current_epoch % self.every_n_epochs
        ):
            return
        dataset = trainer.datamodule.datasets["val"]
        if self._rows is None:
            self._rows = self._choose(dataset)
        start = time.perf_counter()
        xrays = [
            XRay(
                dataset.table["Image Index"].iloc[i],
                read_gray(dataset.table["path"].iloc[i]),
                dataset.labels[i],
            )
            for i in self._rows
        ]
        out_dir = self.dirpath / f"epoch_{trainer.current_epoch:03d}"
        was_training = pl_module.training
        # Lightning runs this hook under inference mode; Grad-CAM methods need gradients.
        identity = of_model(pl_module, None, training_recipe(), data_source())
        model_line = f"{identity.line(checkpoint=False)}, epoch {trainer.current_epoch}"
        with torch.inference_mode(False), torch.enable_grad():
            explain(pl_module.net, xrays, trainer.datamodule.image_size, out_dir, self.method,
                    model_line=model_line)  # fmt: skip
        pl_module.train(was_training)
        log.info(
            "wrote %d heat maps to %s in %.2f s", len(xrays), out_dir, time.perf_counter() - start
        )
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._log_wandb(logger, out_dir, trainer.current_epoch)

    @staticmethod
    def _log_wandb(logger: WandbLogger, out_dir: Path, epoch: int) -> None:
        import pandas as pd
        import wandb

        images = [wandb.Image(str(p), caption=p.stem) for p in sorted(out_dir.glob("*.png"))]
        tables = [pd.read_csv(p).assign(image=p.stem) for p in sorted(out_dir.glob("*.csv"))]
        payload = {"val/heatmaps": images}
        if tables:
            payload["val/predictions"] = wandb.Table(dataframe=pd.concat(tables, ignore_index=True))
        logger.experiment.log({**payload, "epoch": epoch})
