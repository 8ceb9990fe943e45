"""``ModelCheckpoint`` that keeps its best checkpoint when a run is resumed into a new folder."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from pytorch_lightning.callbacks import ModelCheckpoint

from chexnet_pl.files import atomic_write

log = logging.getLogger(__name__)


class BestCheckpoint(ModelCheckpoint):
    """A resumed run writes to a new folder. Lightning then forgets the best score, so the first
    epoch after resuming would become ``best.ckpt`` whatever its score; here the earlier best file
    is copied into the new folder and its score restored."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old_dir = state_dict.get("dirpath")
        if not old_dir or self.dirpath is None or Path(old_dir) == Path(self.dirpath):
            super().load_state_dict(state_dict)
            return
        self.best_model_score = state_dict.get("best_model_score")
        self.kth_value = state_dict.get("kth_value", self.kth_value)
        old_best = Path(state_dict.get("best_model_path") or "")
        if not old_best.is_file():
            log.warning(
                "resuming: the earlier best checkpoint %s is gone; its score %s is kept as the one to beat",
                old_best, self.best_model_score,
            )  # fmt: skip
            self.best_model_path = ""
            return
        new_best = Path(self.dirpath) / old_best.name
        new_best.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(new_best) as partial:
            shutil.copyfile(old_best, partial)
        self.best_model_path = self.kth_best_model_path = str(new_best)
        self.best_k_models = {str(new_best): self.best_model_score}
        log.info(
            "resuming: earlier best checkpoint (score %s) copied to %s",
            self.best_model_score,
            new_best,
        )
