"""The ground floor of checkpoint reading: one loader (weights_only), one message for a damaged
file, the settings read without the weights, and Lightning's resume going through it."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from chexnet_pl import checkpoint_io
from chexnet_pl.checkpoint_io import load_file, read_checkpoint, read_hparams
from chexnet_pl.errors import DiskFullError, WeightsError
from chexnet_pl.models.weights import read_state_dict
from chexnet_pl.training.checkpoint_io import AtomicCheckpointIO


def _checkpoint(path, **extra):
    weights = {"net.w": torch.arange(100_000, dtype=torch.float32)}
    torch.save({"state_dict": weights, "hyper_parameters": {"backbone": "resnet18"}, **extra}, path)
    return path


def _mapped_from(tensor: torch.Tensor, path) -> bool:
    """Whether ``tensor``'s data lies in a memory mapping of ``path`` (Linux's /proc/self/maps)."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(path):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < end:
                return True
    return False


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux's /proc/self/maps")
def test_settings_are_read_without_reading_the_weights(tmp_path):
    path = _checkpoint(tmp_path / "run.ckpt", epoch=3)
    assert read_hparams(path) == {"backbone": "resnet18"}
    lazy = read_checkpoint(path, lazy=True)
    # Memory-mapped: the tensor's data is the file's pages, not a copy read into memory.
    assert _mapped_from(lazy["state_dict"]["net.w"], path.resolve())
    eager = read_checkpoint(path)
    assert not _mapped_from(eager["state_dict"]["net.w"], path.resolve())
    assert eager["epoch"] == lazy["epoch"] == 3
    legacy = tmp_path / "legacy.ckpt"  # torch's old (non-zip) format cannot be mapped: read whole
    torch.save({"hyper_parameters": {"backbone": "alexnet"}}, legacy,
               _use_new_zipfile_serialization=False)  # fmt: skip
    assert read_hparams(legacy) == {"backbone": "alexnet"}
    assert read_hparams(_checkpoint(tmp_path / "bare.ckpt", hyper_parameters=None)) == {}


def test_damaged_files_say_what_they_are_and_what_to_do(tmp_path):
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(_checkpoint(tmp_path / "whole.ckpt").read_bytes()[:5000])
    for lazy in (False, True):
        with pytest.raises(WeightsError, match=r"cut.ckpt is damaged or not a checkpoint "
                                               r"\(\w+.*use the run's other checkpoint"):  # fmt: skip
            read_checkpoint(cut, lazy=lazy)
    with pytest.raises(WeightsError, match=r"is damaged or not a weights file .*download or copy"):
        read_state_dict(cut)
    with pytest.raises(WeightsError, match=r"^checkpoint not found: .*nope.ckpt$"):
        load_file(tmp_path / "nope.ckpt")
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2), tensor)
    with pytest.raises(WeightsError, match="tensor.pt is not a checkpoint: it holds a Tensor"):
        read_checkpoint(tensor)


def test_lightning_resumes_through_the_one_reader(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 4, "state_dict": {"w": torch.ones(2)}}, path)
    assert io.load_checkpoint(path)["epoch"] == 4
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(WeightsError, match=r"last.ckpt is damaged or not a checkpoint"):
        io.load_checkpoint(path)
    with pytest.raises(TypeError, match="weights_only=True only"):
        io.load_checkpoint(path, weights_only=False)


def _fills_the_disk(as_torch_does: bool):
    """A ``torch.save`` that writes 4 KB, then finds the disk full: as ``OSError`` ENOSPC, or as
    torch's zip writer reports it (``RuntimeError`` raised while the ENOSPC is handled)."""
    real_save = torch.save

    def save(obj, stream):
        stream.write(b"PK" + b"\0" * 4094)
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            if as_torch_does:
                raise RuntimeError(
                    "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"
                ) from None
            raise
        real_save(obj, stream)  # never reached

    return save


@pytest.mark.parametrize("as_torch_does", [False, True])
def test_a_full_disk_while_saving_is_one_line_and_keeps_the_old_checkpoint(
    tmp_path, monkeypatch, as_torch_does
):
    last = _checkpoint(tmp_path / "last.ckpt")
    before = last.read_bytes()
    monkeypatch.setattr(checkpoint_io.torch, "save", _fills_the_disk(as_torch_does))
    if as_torch_does:  # torch's message says nothing of the disk: its free space is asked
        monkeypatch.setattr("chexnet_pl.files.free_bytes", lambda folder: 0)
    state = {"state_dict": {"w": torch.zeros(250_000)}, "epoch": 3}
    with pytest.raises(DiskFullError) as caught:
        AtomicCheckpointIO().save_checkpoint(state, last)
    message = str(caught.value)
    assert message.startswith(f"no space left on the disk of {tmp_path} while writing last.ckpt:")
    assert "it needs 1.0 MB" in message and "\n" not in message
    assert last.read_bytes() == before and sorted(tmp_path.iterdir()) == [last]
