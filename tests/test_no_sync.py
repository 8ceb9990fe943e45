"""The training step never reads a tensor back to the host; Lightning's logging and the
progress bar do so only at logging steps; a non-finite loss still stops the run by name.

On a GPU every such read (``.item()``, ``bool(t)``, ``float(t)``...) makes Python wait for the
device, so the next step cannot be queued while this one runs. CPU tensors cannot tell a sync
apart, so these tests patch the reading methods of ``torch.Tensor`` and watch who calls them.
"""

from __future__ import annotations

import contextlib
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from chexnet_pl.errors import TrainingError
from chexnet_pl.models.module import CheXNetModule
from chexnet_pl.train import train

READS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "__array__")
# Host-side reads that are not device syncs: the optimizer's step counter is a CPU tensor unless
# fused/capturable; the DataLoader path's datasets and the device path's OpenCV warps (used for
# CPU tensors only; ``test_batched_warp_reads_nothing_back`` covers the GPU's grid warp) work on
# host memory.
HOST_SIDE = (
    "/torch/optim/",
    "/torch/utils/data/",
    "/chexnet_pl/data/dataset.py",
    "/chexnet_pl/data/batch_augment.py",
)


@contextlib.contextmanager
def watched_reads(on_read):
    """Calls ``on_read(method name)`` whenever a tensor is read back, inside the block."""
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(name, original):
        def reading(self, *args, **kwargs):
            on_read(name)
            return original(self, *args, **kwargs)

        return reading

    try:
        for name, original in originals.items():
            setattr(torch.Tensor, name, wrap(name, original))
        yield
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


@pytest.mark.slow
def test_training_step_never_reads_a_tensor_back(make_cfg, monkeypatch):
    step = CheXNetModule.training_step
    calls = []

    def refuse(name):
        raise AssertionError(f"training_step read a tensor back with Tensor.{name}")

    def guarded(self, batch, batch_idx):
        calls.append(batch_idx)
        with watched_reads(refuse):
            return step(self, batch, batch_idx)

    monkeypatch.setattr(CheXNetModule, "training_step", guarded)
    train(make_cfg("test=false", "trainer.limit_train_batches=3"))
    assert calls == [0, 1, 2]


def _callers() -> list[str]:
    frame, files = sys._getframe(3), []  # the reader's caller
    while frame is not None and len(files) < 40:
        files.append(frame.f_code.co_filename)
        frame = frame.f_back
    return files


class _BatchMarker(pl.Callback):
    """Which training batch is running (None outside the training batches)."""

    def __init__(self) -> None:
        self.batch: int | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batch = batch_idx

    def on_validation_start(self, trainer, pl_module) -> None:
        self.batch = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.batch = None


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["workers", "device"])
def test_reads_happen_only_at_logging_steps(make_cfg, monkeypatch, loader, synthetic_cache):
    """The whole loop, progress bar and throughput callback included: reads only in the batches
    where Lightning logs (every 2nd here) or the epoch's last; none in the others."""
    marker = _BatchMarker()
    reads: dict[int, list[str]] = defaultdict(list)

    def record(name):
        if marker.batch is None:
            return
        callers = _callers()
        if not any(part in path for path in callers for part in HOST_SIDE):
            reads[marker.batch].append(f"{name} from {callers[0]}")

    import chexnet_pl.training.run as train_module

    instantiate = train_module._instantiate_all
    monkeypatch.setattr(
        train_module,
        "_instantiate_all",
        lambda section: (
            instantiate(section) + ([marker] if section and "rng_state" in section else [])
        ),
    )
    cfg = make_cfg(
        f"data.root={synthetic_cache}",
        f"data.loader={loader}",
        "test=false",
        "trainer.limit_train_batches=5",
        "trainer.log_every_n_steps=2",
        "trainer.enable_progress_bar=true",
    )
    with watched_reads(record):
        train(cfg)
    # batch 1 and 3 end on global steps 2 and 4 (logging steps); batch 4 is the epoch's last
    assert set(reads) <= {1, 3, 4}, dict(reads)
    assert {1, 3} <= set(reads)  # the check is live: logging steps do read


@pytest.mark.slow
def test_non_finite_loss_later_in_the_epoch_is_named(make_cfg, monkeypatch):
    """Found at the next check (here the epoch's last batch), naming the step it happened at;
    no checkpoint is written from the broken weights."""
    loss = CheXNetModule._loss

    def nan_at_step_two(self, logits, labels):
        value = loss(self, logits, labels)
        return value * float("nan") if self.training and self.global_step == 2 else value

    monkeypatch.setattr(CheXNetModule, "_loss", nan_at_step_two)
    cfg = make_cfg("test=false", "trainer.limit_train_batches=4", "trainer.log_every_n_steps=50")
    with pytest.raises(
        TrainingError, match=r"training loss is nan at epoch 0, global step 2, batch 2; its images"
    ):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").exists()
