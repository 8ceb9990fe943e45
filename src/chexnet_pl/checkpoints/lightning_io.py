"""Lightning's checkpoint I/O through ``chexnet_pl.checkpoints.file_io``: atomic saves (a kill during a
save never leaves a corrupt file behind) and the project's one reader for resuming."""

from __future__ import annotations

from typing import Any

from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO

from chexnet_pl.checkpoints.file_io import read_checkpoint, write_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves with ``write_checkpoint`` (temporary file, fsync, rename), so ``last.ckpt`` is always
    the previous complete checkpoint or the new complete one; reads with ``read_checkpoint``
    (``weights_only=True``, a damaged file said to be one)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__} does not take storage_options, got {storage_options!r}"
            )
        write_checkpoint(checkpoint, path)

    def load_checkpoint(
        self, path: _PATH, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """On the CPU; Lightning moves each state to its device when it restores it."""
        if weights_only is False:
            raise TypeError(f"{type(self).__name__} reads checkpoints with weights_only=True only")
        return read_checkpoint(path)
