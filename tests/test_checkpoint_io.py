"""The ground floor of checkpoint reading: one loader (weights_only), one message for a damaged
file, the settings read without the weights, and Lightning's resume going through it."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
from conftest import make_model, random_checkpoint

from chexnet_pl.checkpoints import file_io as checkpoint_io
from chexnet_pl.checkpoints.file_io import load_file, read_checkpoint, read_hparams
from chexnet_pl.checkpoints.lightning_io import AtomicCheckpointIO
from chexnet_pl.checkpoints.runs import load_run
from chexnet_pl.errors import DiskFullError, WeightsError
from chexnet_pl.models.init_from import init_from_checkpoint
from chexnet_pl.models.module import CheXNetModule
from chexnet_pl.models.weights import read_state_dict


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
def test_settings_are_read_without_reading_the_weights(tmp_path, monkeypatch):
    path = _checkpoint(tmp_path / "run.ckpt", epoch=3)
    loads = []
    real_load = torch.load

    def recorded_load(*args, **kwargs):
        loaded = real_load(*args, **kwargs)
        loads.append(loaded["state_dict"]["net.w"])
        return loaded

    monkeypatch.setattr(torch, "load", recorded_load)
    assert read_hparams(path) == {"backbone": "resnet18"}
    monkeypatch.undo()
    # read_hparams itself maps the weights (the file's pages), it does not read them.
    assert len(loads) == 1 and _mapped_from(loads[0], path.resolve())
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
    garbled = tmp_path / "garbled.ckpt"  # a pickle with a byte no pickle has: damaged, not unsafe
    garbled.write_bytes(b"\x80\x02\xff")
    with pytest.raises(WeightsError, match=r"garbled.ckpt is damaged or not a checkpoint "
                                           r"\(UnpicklingError: .*copy it again"):  # fmt: skip
        read_checkpoint(garbled)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2), tensor)
    with pytest.raises(WeightsError, match="tensor.pt is not a checkpoint: it holds a Tensor"):
        read_checkpoint(tensor)


def test_lightning_resumes_through_the_one_reader(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"  # folders made as needed
    io.save_checkpoint({"epoch": 4, "state_dict": {"w": torch.ones(2)}}, path)
    assert io.load_checkpoint(path)["epoch"] == 4
    io.save_checkpoint({"epoch": 5, "state_dict": {"w": torch.ones(2)}}, path)  # folders exist now
    assert io.load_checkpoint(path)["epoch"] == 5
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


# -- a valid checkpoint with a payload: every reader refuses it, and the payload never runs ------
def _leave_a_mark(path: str) -> str:
    """What an attacker's ``os.system`` would be, made harmless: it writes ``path``."""
    Path(path).write_text("the checkpoint's payload ran")
    return "unpickled"


class Payload:
    """Pickled as "call ``_leave_a_mark(path)``": unpickling it with ``weights_only=False`` runs
    that call, as a ``__reduce__`` returning ``(os.system, (command,))`` would run a command."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (_leave_a_mark, (self.path,))


@pytest.fixture(scope="module")
def valid_checkpoint(tmp_path_factory) -> dict:
    """A checkpoint every reader loads (the shipped DenseNet-121's weights and settings): refused
    below only because of the payload added to it, not because something else is missing."""
    path = random_checkpoint(tmp_path_factory.mktemp("valid") / "best.ckpt", image_size=64)
    # It does load, by every reader below (without the payload, this fixture fails if not).
    for read in READERS.values():
        read(path)
    return torch.load(path, weights_only=True)


READERS = {
    "read_hparams (lazy: settings, resume checks)": read_hparams,
    "read_checkpoint(lazy=True)": lambda path: read_checkpoint(path, lazy=True),
    "read_checkpoint": read_checkpoint,
    "load_file": load_file,
    "read_state_dict (model.weights_path)": read_state_dict,
    "load_run (every command's model)": lambda path: load_run(path, device="cpu"),
    "CheXNetModule.load_from_checkpoint": CheXNetModule.load_from_checkpoint,
    "AtomicCheckpointIO.load_checkpoint (resume)": AtomicCheckpointIO().load_checkpoint,
    "init_from_checkpoint (model.init_from)": lambda path: init_from_checkpoint(make_model(), path),
}


@pytest.mark.parametrize("reader", READERS)
def test_a_valid_checkpoint_with_a_payload_is_refused_before_it_runs(
    reader, valid_checkpoint, tmp_path
):
    """``weights_only=True`` at every ``torch.load``: with ``False`` at any of them, this file
    loads (its weights and settings are a real model's) and its payload runs."""
    mark = tmp_path / "payload-ran"
    path = tmp_path / "poisoned.ckpt"
    torch.save({**valid_checkpoint, "callbacks": {"note": Payload(mark)}}, path)
    with pytest.raises(
        WeightsError,
        match=r"poisoned.ckpt needs arbitrary unpickling to load \(test_checkpoint_io._leave_a_mark "
        r"is not plain weights\), which is refused",
    ):
        READERS[reader](path)
    assert not mark.exists(), f"{reader} ran the checkpoint's payload"
