"""The pre-resized image cache: built from real PNG files, resumable, atomic, never used stale."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import small_datamodule

from chexnet_pl.data import prepare as prepare_module
from chexnet_pl.data.cache import StaleCache, cache_folder, open_cache
from chexnet_pl.data.images import read_gray
from chexnet_pl.data.prepare import build_cache
from chexnet_pl.data.transforms import area_resize as resize_gray
from chexnet_pl.errors import ConfigError, DataError, DiskFullError


@pytest.fixture
def release(tmp_path, synthetic_root):
    """A writable copy of the synthetic release (64 px PNGs)."""
    root = tmp_path / "nih"
    shutil.copytree(synthetic_root, root)
    return root


def _datamodule(root, **kwargs):
    return small_datamodule(root, report_dir=str(root / "reports"), **kwargs)


def test_cache_holds_each_image_area_resized(release):
    folder = build_cache(release, size=32, workers=1, progress=False)
    assert folder == release / "prepared" / "32px"
    cache = open_cache(folder, 32)
    pngs = sorted((release / "images").glob("*.png"))
    assert cache.count == len(pngs) and list(cache.index["Image Index"]) == [p.name for p in pngs]
    for row in (0, 7, len(pngs) - 1):
        expected = resize_gray(read_gray(pngs[row]), 32)
        assert np.array_equal(cache.read(row), expected)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["complete"] and manifest["size"] == 32 and manifest["bad"] == 0
    assert not (folder / "status.u8").exists()


def test_data_module_reads_the_cache_with_the_same_samples_and_augmentations(release):
    build_cache(release, size=32, workers=1, progress=False)
    augment = {"hflip": 0.5, "affine": 1.0}
    cached = _datamodule(release, augment=augment)
    raw = _datamodule(release, augment=augment, cache="off")
    cached.setup()
    raw.setup()
    assert cached.datasets["train"].cache is not None and raw.datasets["train"].cache is None
    for split in ("train", "val", "test"):
        a, b = cached.datasets[split], raw.datasets[split]
        assert list(a.table["Image Index"]) == list(b.table["Image Index"])
        for index in (0, len(a) - 1):
            torch.manual_seed(index)  # the augmentation draws from torch's generator
            sample_a = a[index]
            torch.manual_seed(index)
            sample_b = b[index]
            assert torch.equal(sample_a["img"], sample_b["img"]), (split, index)
            assert torch.equal(sample_a["lab"], sample_b["lab"])


def test_a_larger_cache_is_resized_down_and_a_smaller_one_is_not_used(release, caplog):
    build_cache(release, size=48, workers=1, progress=False)
    dm = _datamodule(release, image_size=32)
    dm.setup()
    assert dm.image_cache.size == 48
    image = dm.datasets["val"][0]["img"]
    assert image.shape == (1, 32, 32) and image.dtype == torch.uint8
    reference = resize_gray(read_gray(dm.datasets["val"].table["path"][0]), 32)
    assert np.abs(image[0].numpy().astype(int) - reference.astype(int)).mean() < 3

    caplog.set_level(logging.INFO)
    bigger = _datamodule(release, image_size=64)
    bigger.setup()
    assert bigger.image_cache is None
    assert "size=64" in caplog.text  # says how to build one


def test_changed_source_makes_the_cache_stale_until_rebuilt(release, caplog):
    build_cache(release, size=32, workers=1, progress=False)
    victim = sorted((release / "images").glob("*.png"))[3]
    stat = victim.stat()
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    caplog.set_level(logging.WARNING)
    dm = _datamodule(release)
    dm.setup()
    assert dm.image_cache is None and victim.name in caplog.text and "prepare" in caplog.text
    with pytest.raises(DataError, match=rf"cache=required.*{victim.name}.*chexnet-prepare"):
        _datamodule(release, cache="required").setup()

    caplog.clear()
    build_cache(release, size=32, workers=1, progress=False)
    assert "rebuilding" in caplog.text
    dm = _datamodule(release, cache="required")
    dm.setup()
    assert dm.image_cache is not None


def test_added_or_removed_image_triggers_a_rebuild(release, caplog):
    build_cache(release, size=32, workers=1, progress=False)
    pngs = sorted((release / "images").glob("*.png"))
    shutil.copy(pngs[0], release / "images" / "99999999_000.png")
    caplog.set_level(logging.INFO)
    folder = build_cache(release, size=32, workers=1, progress=False)
    assert "rebuilding" in caplog.text
    assert "99999999_000.png" in set(open_cache(folder, 32).index["Image Index"])

    pngs[1].unlink()  # a listed image gone: the data module must not read a stale copy of it
    with pytest.raises(DataError, match=pngs[1].name):
        _datamodule(release, cache="required").setup()


def test_interrupted_build_is_invisible_then_resumed(release, monkeypatch):
    real = prepare_module._decode_chunk
    calls = {"n": 0}

    def interrupted(job):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(prepare_module, "_decode_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_cache(release, size=32, workers=1, chunk_size=16, progress=False)
    folder = cache_folder(release / "prepared", 32)
    assert not folder.exists() and folder.with_name("32px.partial").exists()
    with pytest.raises(DataError, match="cache=required"):
        _datamodule(release, cache="required").setup()

    monkeypatch.setattr(prepare_module, "_decode_chunk", real)
    decoded = []
    monkeypatch.setattr(
        prepare_module, "_decode_chunk", lambda job: decoded.append(len(job[0])) or real(job)
    )
    build_cache(release, size=32, workers=1, chunk_size=16, progress=False)
    total = len(list((release / "images").glob("*.png")))
    assert sum(decoded) == total - 32  # the two finished chunks were not decoded again
    fresh = build_cache(release, size=32, cache_dir=release / "fresh", workers=1, progress=False)
    assert (folder / "images.u8").read_bytes() == (fresh / "images.u8").read_bytes()


def test_unreadable_image_is_recorded_and_handled_like_a_bad_file(release):
    victim = sorted((release / "images").glob("*.png"))[5]
    victim.write_bytes(victim.read_bytes()[:100])  # truncated
    folder = build_cache(release, size=32, workers=1, progress=False)
    cache = open_cache(folder, 32)
    entry = cache.index.set_index("Image Index").loc[victim.name]
    assert entry["status"] == "bad" and entry["error"]

    with pytest.raises(DataError, match=victim.name):
        _datamodule(release).setup()
    dm = _datamodule(release, on_bad_image="skip")
    dm.setup()
    assert dm.image_cache is not None
    assert victim.name not in set(dm.table["Image Index"])
    assert victim.name in (release / "reports" / "skipped_images.csv").read_text()


def test_cache_of_another_version_is_refused(release):
    folder = build_cache(release, size=32, workers=1, progress=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "version": 0}))
    with pytest.raises(StaleCache, match="another version"):
        open_cache(folder, 32)
    dm = _datamodule(release)
    dm.setup()
    assert dm.image_cache is None and dm.datasets["train"].cache is None  # decodes PNGs instead
    with pytest.raises(DataError, match="another version"):
        _datamodule(release, cache="required").setup()


def test_damaged_cache_files_fall_back_to_pngs(release, caplog):
    folder = build_cache(release, size=32, workers=1, progress=False)
    (folder / "index.csv").write_text("Image Index,source\n")  # a half-copied index
    caplog.set_level(logging.WARNING)
    dm = _datamodule(release)
    dm.setup()
    assert dm.image_cache is None and "lacks the column" in caplog.text
    (folder / "index.csv").unlink()
    with pytest.raises(DataError, match="is damaged"):
        _datamodule(release, cache="required").setup()


def test_cache_rebuilt_while_in_use_is_refused_not_misread(release):
    build_cache(release, size=32, workers=1, progress=False)
    dm = _datamodule(release, cache="required")
    dm.setup()
    build_cache(release, size=32, workers=1, progress=False, force=True)  # a new images.u8
    with pytest.raises(DataError, match="rebuilt or changed while this run was using it"):
        dm.datasets["val"][0]


def test_cache_size_below_the_image_size_is_refused(release):
    build_cache(release, size=32, workers=1, progress=False)
    with pytest.raises(ConfigError, match="cache_size=32 is smaller than data.image_size=48"):
        _datamodule(release, image_size=48, cache_size=32)  # judged when built, before setup


def test_finished_build_stopped_before_its_rename_is_published(release, monkeypatch):
    calls = []
    real = prepare_module._publish

    def stop_before_rename(partial, folder):
        calls.append(partial)
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "_publish", stop_before_rename)
    with pytest.raises(KeyboardInterrupt):
        build_cache(release, size=32, workers=1, progress=False)
    monkeypatch.setattr(prepare_module, "_publish", real)
    decoded = []
    monkeypatch.setattr(prepare_module, "_decode_chunk", lambda job: decoded.append(job) or (0, []))
    folder = build_cache(release, size=32, workers=1, progress=False)
    assert decoded == [] and open_cache(folder, 32).count == len(
        list((release / "images").glob("*.png"))
    )


@pytest.mark.slow
def test_prepare_command_in_parallel_matches_a_serial_build(release, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "chexnet_pl.prepare",
            f"root={release}",
            "size=32",
            "workers=2",
            "chunk_size=10",
            "progress=false",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    serial = build_cache(release, size=32, cache_dir=tmp_path / "serial", workers=1, progress=False)
    parallel = cache_folder(release / "prepared", 32)
    assert (parallel / "images.u8").read_bytes() == (serial / "images.u8").read_bytes()


def test_a_full_disk_during_the_build_is_one_line_and_a_rerun_resumes(release, monkeypatch):
    real = prepare_module._decode_chunk
    calls = {"n": 0}

    def disk_fills(job):  # the second chunk's results cannot be recorded: the disk is full
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(job)

    monkeypatch.setattr(prepare_module, "_decode_chunk", disk_fills)
    with pytest.raises(DiskFullError) as caught:
        build_cache(release, size=32, workers=1, chunk_size=16, progress=False)
    partial = cache_folder(release / "prepared", 32).with_name("32px.partial")
    message = str(caught.value)
    assert message.startswith(f"no space left on the disk of {partial} while building the cache")
    assert "rerun to resume" in message and "\n" not in message
    monkeypatch.setattr(prepare_module, "_decode_chunk", real)

    # The disk fills as the finished index is written: that file is not left half-written.
    real_to_csv = pd.DataFrame.to_csv

    def to_csv(self, path=None, *args, **kwargs):
        if "status" in self.columns:  # the index of a finished build
            Path(path).write_text("Image Index,source,by")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_to_csv(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)
    with pytest.raises(
        DiskFullError, match=rf"disk of {partial} while writing index.csv: it needs"
    ):
        build_cache(release, size=32, workers=1, chunk_size=16, progress=False)
    assert not (partial / "index.csv.partial").exists()
    assert "status" not in pd.read_csv(partial / "index.csv").columns  # the build's own listing
    monkeypatch.setattr(pd.DataFrame, "to_csv", real_to_csv)
    folder = build_cache(release, size=32, workers=1, chunk_size=16, progress=False)
    fresh = build_cache(release, size=32, cache_dir=release / "fresh", workers=1, progress=False)
    assert (folder / "images.u8").read_bytes() == (fresh / "images.u8").read_bytes()


def _hold_lock(folder):
    """Take ``<size>px.lock`` as a running ``chexnet-prepare`` holds it; returns its descriptor."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(folder.with_name(folder.name + ".lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return handle


def test_a_second_build_of_the_same_cache_waits_for_the_first(release, caplog):
    folder = cache_folder(release / "prepared", 32)
    handle = _hold_lock(folder)
    built, waiting = [], threading.Event()

    class Seen(logging.Handler):
        def emit(self, record):
            if "waiting for it to finish" in record.getMessage():
                waiting.set()

    seen = Seen()
    logging.getLogger("chexnet_pl.data.prepare").addHandler(seen)
    second = threading.Thread(
        target=lambda: built.append(build_cache(release, size=32, workers=1, progress=False))
    )
    try:
        second.start()
        assert waiting.wait(120), "the second build did not wait for the lock"
        assert second.is_alive() and not folder.exists() and not built
    finally:
        os.close(handle)  # the first build ends
        second.join(120)
        logging.getLogger("chexnet_pl.data.prepare").removeHandler(seen)
    assert built == [folder] and open_cache(folder, 32).count > 0
    assert f"another chexnet-prepare is building {folder}" in caplog.text


@pytest.mark.slow
def test_prepare_command_waits_for_another_one_on_the_same_root(release, tmp_path):
    folder = cache_folder(release / "prepared", 32)
    handle = _hold_lock(folder)
    try:
        second = subprocess.Popen(
            [sys.executable, "-m", "chexnet_pl.prepare", f"root={release}", "size=32",
             "workers=1", "progress=false", f"hydra.run.dir={tmp_path / 'run'}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        watchdog = threading.Timer(300, second.kill)  # never a hung suite
        watchdog.start()
        lines = []
        for line in second.stdout:
            lines.append(line)
            if "waiting for it to finish" in line:
                break
        assert second.poll() is None and not folder.exists(), "".join(lines)
    finally:
        os.close(handle)  # the first build ends
    output = "".join(lines) + second.stdout.read()
    assert second.wait() == 0, output
    watchdog.cancel()
    assert "Traceback" not in output and open_cache(folder, 32).count > 0


@pytest.mark.slow
def test_prepare_command_names_a_missing_root(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "chexnet_pl.prepare", f"root={tmp_path / 'nope'}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert "nope is not a folder" in output and "Traceback" not in output


def test_real_sample_cache(nih_sample, tmp_path):
    folder = build_cache(nih_sample, size=64, cache_dir=tmp_path, workers=2, progress=False)
    cache = open_cache(folder, 64)
    assert cache.count == 59 and set(cache.index["status"]) == {"ok"}
    for row in range(0, 59, 11):
        source = nih_sample / "images" / cache.index["Image Index"][row]
        assert np.array_equal(cache.read(row), resize_gray(read_gray(source), 64))
    dm = small_datamodule(nih_sample, image_size=64, cache="required", cache_dir=str(tmp_path),
                          report_dir=str(tmp_path / "reports"))  # fmt: skip
    dm.setup()
    assert sum(len(ds) for ds in dm.datasets.values()) == 59


def test_area_resize_in_two_steps_matches_one_area_step(nih_sample):
    import cv2

    from chexnet_pl.data.transforms import area_resize

    image = read_gray(sorted((nih_sample / "images").glob("*.png"))[0])
    two_steps = area_resize(image, 224)
    one_step = cv2.resize(image, (224, 224), interpolation=cv2.INTER_AREA)
    assert two_steps.shape == (224, 224) and two_steps.dtype == np.uint8
    assert np.abs(two_steps.astype(int) - one_step.astype(int)).mean() < 1.0
    assert area_resize(one_step, 224) is one_step  # already the size: untouched
