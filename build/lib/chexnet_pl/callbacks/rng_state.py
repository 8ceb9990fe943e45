"""Save and restore every random generator with the checkpoint, so a resumed run continues
with the same random stream (augmentations, shuffling, dropout) as an uninterrupted one."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch


class RNGStateCheckpoint(pl.Callback):
    def state_dict(self) -> dict[str, Any]:
        state = {
            "python": list(random.getstate()[1]),
            "python_version": random.getstate()[0],
            "python_gauss": random.getstate()[2],
            "numpy": np.random.get_state()[1].tolist(),
            "numpy_pos": int(np.random.get_state()[2]),
            "numpy_gauss": [int(np.random.get_state()[3]), float(np.random.get_state()[4])],
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(
            (state_dict["python_version"], tuple(state_dict["python"]), state_dict["python_gauss"])
        )
        np.random.set_state(
            (
                "MT19937",
                np.array(state_dict["numpy"], dtype=np.uint32),
                state_dict["numpy_pos"],
                *state_dict["numpy_gauss"],
            )
        )
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
