"""Fault injection: each bad input or fault is built on disk (or a real process is signalled)
and the exact behaviour is asserted. The Reliability page (docs/reliability.md) summarises these cases."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import arnoweng_checkpoint, compose_config, make_model, small_datamodule
from PIL import Image

from chexnet_pl.checkpoints import file_io as checkpoint_io
from chexnet_pl.data.nih_table import FINDINGS
from chexnet_pl.errors import DataError, DiskFullError, TrainingError, WeightsError
from chexnet_pl.models.arnoweng import ARNOWENG_CLASSES, import_arnoweng
from chexnet_pl.models.module import CheXNetModule
from chexnet_pl.train import train

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}


def _png_bytes(array: np.ndarray, mode: str | None = None, path: Path | None = None) -> bytes:
    path = path or Path(f"/tmp/_fault_{os.getpid()}.png")
    Image.fromarray(array, mode=mode).save(path)
    data = path.read_bytes()
    path.unlink()
    return data


def _corrupt_middle(data: bytes) -> bytes:
    """Header and IEND intact, compressed pixels destroyed: passes the fast check, fails decoding."""
    middle = len(data) // 2
    return data[:middle] + bytes(200) + data[middle + 200 :]


@pytest.fixture
def faulty_root(tmp_path, synthetic_root):
    """A copy of the synthetic download whose first training images are replaced by bad cases."""
    root = tmp_path / "faulty"
    shutil.copytree(synthetic_root, root)
    names = (root / "train_val_list.txt").read_text().split()
    gray = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    cases = {
        "zero_bytes": (b"", "empty file (0 bytes)"),
        "truncated_png": (_png_bytes(gray)[:-300], "truncated PNG"),
        "text_named_png": (b"patient notes, not an image\n", "not an image"),
    }
    readable = {
        "sixteen_bit": _png_bytes(gray.astype(np.uint16) * 257),
        "rgba": _png_bytes(np.dstack([gray, gray, gray, np.full_like(gray, 128)]), "RGBA"),
        "non_square": _png_bytes(gray[:, :40]),
        "tiny": _png_bytes(gray[:2, :2]),
    }
    layout = {}
    for name, (case, (content, reason)) in zip(names, cases.items(), strict=False):
        (root / "images" / name).write_bytes(content)
        layout[name] = (case, reason)
    for name, (case, content) in zip(names[len(cases) :], readable.items(), strict=False):
        (root / "images" / name).write_bytes(content)
        layout[name] = (case, None)
    palette = names[len(cases) + len(readable)]
    Image.fromarray(gray).convert("P").save(root / "images" / palette)
    layout[palette] = ("palette", None)
    jpeg = names[len(cases) + len(readable) + 1]
    Image.fromarray(gray).save(root / "images" / jpeg, format="JPEG")
    layout[jpeg] = ("jpeg_named_png", None)
    return root, layout


def _dm(root, **kwargs):
    return small_datamodule(
        root, **{"split": {"method": "official", "val_fraction": 0.2}, **kwargs}
    )


def test_bad_images_stop_before_training_listing_every_one(faulty_root, tmp_path):
    root, layout = faulty_root
    with pytest.raises(DataError) as err:
        _dm(root, report_dir=str(tmp_path / "run")).setup("fit")
    message = str(err.value)
    bad = {name: reason for name, (case, reason) in layout.items() if reason}
    assert message.startswith(f"{len(bad)} image file(s) cannot be used")
    for name, reason in bad.items():
        assert re.search(rf"{name} \((train|val)\): {re.escape(reason)}", message), name
    listed = pd.read_csv(tmp_path / "run" / "bad_images.csv")
    assert list(listed.columns) == ["Image Index", "split", "reason"]
    assert sorted(listed["Image Index"]) == sorted(bad)
    assert "data.on_bad_image=skip" in message and f"All {len(bad)} are listed in" in message


def test_skip_leaves_bad_images_out_and_lists_them(faulty_root, tmp_path, caplog):
    root, layout = faulty_root
    dm = _dm(root, on_bad_image="skip", report_dir=str(tmp_path / "run"))
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    bad = [name for name, (_, reason) in layout.items() if reason]
    assert f"leaving out {len(bad)} of 120 unusable image file(s)" in caplog.text
    skipped = pd.read_csv(tmp_path / "run" / "skipped_images.csv")
    assert list(skipped.columns) == ["Image Index", "split", "reason"]
    assert sorted(skipped["Image Index"]) == sorted(bad)
    for name, split, reason in skipped.itertuples(index=False):
        assert layout[name][1] in reason and split in ("train", "val"), name
    # Every odd-but-valid file is read as 8-bit gray at the training size.
    for name, (case, reason) in layout.items():
        if reason is None:
            dataset = next(
                d for d in dm.datasets.values() if (d.table["Image Index"] == name).any()
            )
            sample = dataset[int(np.flatnonzero(dataset.table["Image Index"] == name)[0])]
            assert sample["img"].dtype == torch.uint8 and sample["img"].shape == (1, 32, 32), case
    assert not set(bad) & set(dm.table["Image Index"])


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_image_that_breaks_mid_epoch_in_a_worker(synthetic_root, tmp_path, make_cfg, policy):
    """Passes the header check, fails to decode inside a DataLoader worker."""
    root = tmp_path / "mid_epoch"
    shutil.copytree(synthetic_root, root)
    cfg = make_cfg(f"data.root={root}", "data.num_workers=1", f"data.on_bad_image={policy}", "test=false",
                   "trainer.max_epochs=1", "trainer.limit_train_batches=1.0")  # fmt: skip
    probe = hydra.utils.instantiate(cfg.data)
    probe.setup("fit")
    victim = probe.datasets["train"].table["Image Index"].iloc[0]
    path = root / "images" / victim
    path.write_bytes(_corrupt_middle(path.read_bytes()))
    if policy == "error":
        with pytest.raises(
            DataError,
            match=rf"^cannot read image \S*{victim}: corrupt or truncated .*on_bad_image=skip",
        ):
            train(cfg)
    else:
        metrics, _ = train(cfg)
        assert np.isfinite(metrics["train/loss_epoch"])
        report = Path(cfg.paths.output_dir) / "skipped_images.csv"
        # Only a mid-training skip: the file still starts with its header and reads as a table.
        assert report.read_text().splitlines()[0] == "Image Index,split,reason"
        skipped = pd.read_csv(report)
        assert skipped["Image Index"].tolist() == [victim] and skipped["split"].tolist() == [
            "train"
        ]
        assert skipped["reason"][0].startswith("failed to decode during training: corrupt")


def test_split_with_zero_images(synthetic_root, make_cfg):
    with pytest.raises(DataError, match=r"the val split has no images"):
        _dm(synthetic_root, split={"method": "official", "val_fraction": 0.0}).setup("fit")
    # With test=true (the default) an empty test split stops the run before training.
    cfg = make_cfg("data.split.method=patient", "data.split.fractions=[0.9,0.1,0.0]")
    with pytest.raises(DataError, match=r"the test split has no images"):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_non_finite_loss_names_step_and_images(make_cfg, monkeypatch):
    monkeypatch.setattr(
        CheXNetModule, "_loss", lambda self, logits, labels: logits.sum() * float("nan")
    )
    with pytest.raises(
        TrainingError,
        match=r"training loss is nan at epoch 0, global step 0, batch 0; its images: \['0000",
    ):
        train(make_cfg("test=false"))


def test_unwritable_output_folder_and_full_disk(make_cfg, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(TrainingError, match=r"cannot write to the output folder .*a_file/run"):
        train(make_cfg(f"paths.output_dir={blocker}/run"))
    with pytest.raises(
        TrainingError, match=r"GB free where the run writes .*paths.min_free_gb=1000000000000.0"
    ):
        train(make_cfg("paths.min_free_gb=1e12"))


def test_a_full_disk_while_the_checkpoint_is_saved_is_one_line(make_cfg, monkeypatch):
    def disk_full(obj, stream):
        stream.write(b"PK\x03\x04" + b"\0" * 60_000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io.torch, "save", disk_full)
    cfg = make_cfg("test=false")
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    with pytest.raises(DiskFullError) as caught:
        train(cfg)
    message = str(caught.value)
    assert message.startswith(f"no space left on the disk of {checkpoints} while writing ")
    assert re.search(r"\.ckpt: it needs \d+\.\d MB \(", message) and "\n" not in message
    assert not list(checkpoints.glob("*.partial")) and not list(checkpoints.glob("*.ckpt"))


def test_unsafe_and_mismatched_checkpoints(make_cfg, tmp_path):
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "extra": argparse.Namespace(x=1)}, unsafe)
    with pytest.raises(WeightsError, match="arbitrary unpickling"):
        CheXNetModule.load_from_checkpoint(unsafe)
    _, objects = train(make_cfg("test=false"))
    last = Path(objects["trainer"].checkpoint_callbacks[1].dirpath) / "last.ckpt"
    with pytest.raises(
        WeightsError, match=r"it has include_no_finding=True, this run has include_no_finding=False"
    ):
        train(
            make_cfg(
                f"ckpt_path={last}",
                "include_no_finding=false",
                f"paths.output_dir={tmp_path / 'resume'}",
            )
        )


@pytest.mark.slow
def test_import_arnoweng_chexnet_weights(tmp_path):
    source = tmp_path / "model.pth.tar"
    _, reference = arnoweng_checkpoint(source)
    target = tmp_path / "imported.ckpt"
    run = subprocess.run([sys.executable, "-m", "chexnet_pl.import_weights", str(source), str(target)],
                         env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    model = CheXNetModule.load_from_checkpoint(target).eval()
    assert model.class_names == list(FINDINGS)
    images = torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        theirs = reference(model.net.prepare_input(images).contiguous())
        ours = model.predict_proba(images)
    order = [ARNOWENG_CLASSES.index(c) for c in FINDINGS]
    torch.testing.assert_close(ours, theirs[:, order], atol=1e-5, rtol=1e-4)


def test_imported_weights_without_batch_counters_evaluate(tmp_path, synthetic_root):
    """arnoweng's file predates num_batches_tracked; the 14-output model evaluates on 15-class data."""
    from chexnet_pl.evaluate import evaluate

    source = tmp_path / "model.pth.tar"
    state, _ = arnoweng_checkpoint(source)
    torch.save(
        {"state_dict": {k: v for k, v in state.items() if "num_batches_tracked" not in k}}, source
    )
    target = tmp_path / "imported.ckpt"
    import_arnoweng(source, target)
    cfg = compose_config("evaluate", tmp_path / "eval", f"ckpt={target}", f"data.root={synthetic_root}",
                         "data.image_size=64", "data.num_workers=0", "evaluation.bootstrap_samples=0",
                         "evaluation.plots=false", "evaluation.subgroups=[]")  # fmt: skip
    metrics = evaluate(cfg)
    assert "test/auroc" in metrics and "test/auroc_No Finding" not in metrics


def test_import_refuses_a_checkpoint_that_would_drop_weights(tmp_path):
    source = tmp_path / "model.pth.tar"
    state, _ = arnoweng_checkpoint(source)
    del state["module.densenet121.features.denseblock3.denselayer5.conv.2.weight"]
    torch.save({"state_dict": state}, source)
    with pytest.raises(
        WeightsError, match=r"1 weight\(s\) missing .*denseblock3.denselayer5.conv2.weight"
    ):
        import_arnoweng(source, tmp_path / "out.ckpt")


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_and_exits(synthetic_root, tmp_path):
    run_dir = tmp_path / "interrupted"
    command = [
        sys.executable, "-m", "chexnet_pl.train", "experiment=demo", f"data.root={synthetic_root}",
        "data.synthetic=null", "data.image_size=32", "data.num_workers=0", "trainer.max_epochs=50",
        "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 300
    while (
        not (run_dir / "checkpoints" / "last.ckpt").exists()
        and time.time() < deadline
        and process.poll() is None
    ):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 1, output[-2000:]
    interrupted = run_dir / "checkpoints" / "interrupted.ckpt"
    assert "Resume with ckpt_path=" in output and str(interrupted) in output
    # what was trained up to the interrupt, no less than the last epoch's checkpoint (the signal
    # can land in the epoch after it or while that epoch is still being closed)
    saved, last = (torch.load(p, map_location="cpu", weights_only=True)
                   for p in (interrupted, run_dir / "checkpoints" / "last.ckpt"))  # fmt: skip
    assert saved["global_step"] >= last["global_step"] > 0
    CheXNetModule.load_from_checkpoint(interrupted)


def _split_names(root: Path, name: str, **kwargs) -> list[str]:
    probe = _dm(root, **kwargs)
    probe.setup("fit")
    return probe.datasets[name].table["Image Index"].tolist()


def test_every_data_problem_is_reported_in_one_go(faulty_root, tmp_path):
    """Missing files and bad files together: one error, one list (before: missing first, the bad
    files only on the next run)."""
    root, layout = faulty_root
    bad = sorted(name for name, (_, reason) in layout.items() if reason)
    gone = sorted((root / "images").iterdir())[-3:]
    for path in gone:
        path.unlink()
    with pytest.raises(DataError) as err:
        _dm(root, report_dir=str(tmp_path / "run")).setup("fit")
    message = str(err.value)
    assert "3 of 120 images listed in" in message and "data.missing_images=skip" in message
    assert f"{len(bad)} image file(s) cannot be used" in message
    assert all(name in message for name in bad)
    listed = pd.read_csv(tmp_path / "run" / "bad_images.csv")
    assert sorted(listed["Image Index"]) == sorted(bad + [p.name for p in gone])


def test_skipped_images_lists_every_image_left_out_for_any_reason(faulty_root, tmp_path):
    root, layout = faulty_root
    bad = [name for name, (_, reason) in layout.items() if reason]
    gone = sorted((root / "images").iterdir())[-2:]
    for path in gone:
        path.unlink()
    dm = _dm(root, missing_images="skip", on_bad_image="skip", report_dir=str(tmp_path / "run"))
    dm.setup("fit")
    skipped = pd.read_csv(tmp_path / "run" / "skipped_images.csv")
    assert list(skipped.columns) == ["Image Index", "split", "reason"]
    assert sorted(skipped["Image Index"]) == sorted(bad + [p.name for p in gone])
    by_name = skipped.set_index("Image Index")
    assert all(by_name.at[p.name, "reason"] == f"not on disk under {root}" for p in gone)
    assert set(skipped["split"]) <= {"train", "val", "test"} and skipped["split"].notna().all()
    assert len(dm.table) == 120 - len(bad) - len(gone)


@pytest.mark.slow
def test_corrupt_test_image_is_handled_before_training(synthetic_root, tmp_path, make_cfg):
    """Header intact, pixels corrupt, in the test split: found by the full decode of val/test
    before training. skip: left out, listed, and the run ends with its test evaluation (before:
    it crashed that evaluation after training with a worker traceback); error: stops first."""
    root = tmp_path / "corrupt_test"
    shutil.copytree(synthetic_root, root)
    victim = _split_names(root, "test")[0]
    path = root / "images" / victim
    path.write_bytes(_corrupt_middle(path.read_bytes()))
    common = (f"data.root={root}",)
    cfg = make_cfg(*common, "data.on_bad_image=skip")
    metrics, _ = train(cfg)
    run = Path(cfg.paths.output_dir)
    assert "test/auroc" in metrics and victim not in set(
        pd.read_csv(run / "preds.csv")["Image Index"]
    )
    skipped = pd.read_csv(run / "skipped_images.csv")
    assert skipped.values.tolist()[0][:2] == [victim, "test"]
    assert skipped["reason"][0].startswith("corrupt or truncated")
    stopped = make_cfg(*common, f"paths.output_dir={tmp_path / 'stopped'}")
    with pytest.raises(DataError, match=rf"1 image file\(s\) cannot be used:\n  {victim} \(test\)"):
        train(stopped)
    assert not (tmp_path / "stopped" / "checkpoints").exists()


def test_a_val_image_failing_mid_run_under_skip_gives_advice_that_fits(
    synthetic_root, tmp_path, make_cfg
):
    """With the full decode turned off, a corrupt val image stops the run; the advice must not be
    "set data.on_bad_image=skip" when it is set."""
    root = tmp_path / "corrupt_val"
    shutil.copytree(synthetic_root, root)
    victim = _split_names(root, "val", split={"method": "official", "seed": 12345})[0]
    path = root / "images" / victim
    path.write_bytes(_corrupt_middle(path.read_bytes()))
    cfg = make_cfg(f"data.root={root}", "data.on_bad_image=skip", "data.decode_check=[]",
                   "test=false")  # fmt: skip
    with pytest.raises(DataError) as err:
        train(cfg)
    message = str(err.value)
    assert message.startswith(f"cannot read image {path}") and "data.decode_check" in message
    assert "set data.on_bad_image=skip" not in message


@pytest.mark.slow
def test_evaluation_failing_after_training_keeps_the_run_and_says_how_to_evaluate(
    synthetic_root, tmp_path, make_cfg
):
    root = tmp_path / "corrupt_late"
    shutil.copytree(synthetic_root, root)
    victim = _split_names(root, "test")[0]
    path = root / "images" / victim
    path.write_bytes(_corrupt_middle(path.read_bytes()))
    cfg = make_cfg(f"data.root={root}", "data.decode_check=[]")
    with pytest.raises(TrainingError) as err:
        train(cfg)
    run = Path(cfg.paths.output_dir)
    message = str(err.value)
    assert message.startswith("training finished and its checkpoints are kept, but the test ")
    assert f"cannot read image {path}" in message
    assert f"chexnet-evaluate ckpt={run}/checkpoints/best.ckpt" in message
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "run_summary.json").is_file()


@pytest.fixture(scope="module")
def model_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint saved by a real Trainer with no data settings in it (like an imported one)."""
    import pytorch_lightning as pl

    trainer = pl.Trainer(
        max_epochs=0, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.strategy.connect(make_model())
    path = tmp_path_factory.mktemp("model_only") / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


def _compose(name: str, output_dir: Path, *overrides: str):
    return compose_config(name, output_dir, *overrides)


@pytest.fixture(scope="module")
def damaged_checkpoints(tmp_path_factory, model_checkpoint) -> dict[str, Path]:
    """A real checkpoint cut in half, an empty file, a text file and random bytes named .ckpt."""
    folder = tmp_path_factory.mktemp("damaged")
    data = model_checkpoint.read_bytes()
    contents = {"truncated": data[: len(data) // 2], "empty": b"", "text": b"not a checkpoint\n",
                "random": np.random.default_rng(0).bytes(4096)}  # fmt: skip
    for name, content in contents.items():
        (folder / f"{name}.ckpt").write_bytes(content)
    return {name: folder / f"{name}.ckpt" for name in contents}


def test_damaged_checkpoints_are_said_to_be_damaged_wherever_read(
    damaged_checkpoints, make_cfg, synthetic_root, tmp_path
):
    from chexnet_pl.evaluate import evaluate
    from chexnet_pl.models.init_from import init_from_checkpoint, read_checkpoint
    from chexnet_pl.predict import predict

    def composed(name: str, *overrides: str):
        return _compose(name, tmp_path / name, *overrides)

    image = next((synthetic_root / "images").iterdir())
    for kind, path in damaged_checkpoints.items():
        damaged = rf"^{re.escape(str(path))} is damaged or not a checkpoint \(\w+"
        readers = {
            "read_checkpoint": lambda p=path: read_checkpoint(p),
            "load_from_checkpoint": lambda p=path: CheXNetModule.load_from_checkpoint(p),
            "init_from": lambda p=path: init_from_checkpoint(make_model(), p),
            "evaluate": lambda p=path: evaluate(composed("evaluate", f"ckpt={p}")),
            "predict": lambda p=path: predict(composed("predict", f"ckpt={p}", f"image={image}")),
        }
        for reader, read in readers.items():
            with pytest.raises(WeightsError, match=damaged):
                read()
            print(kind, reader, "ok")
    with pytest.raises(WeightsError, match=r"is damaged or not a checkpoint .*copy it again"):
        train(make_cfg(f"ckpt_path={damaged_checkpoints['truncated']}"))


@pytest.mark.slow  # launches a process
def test_damaged_checkpoint_on_the_command_line_is_one_line(damaged_checkpoints, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "chexnet_pl.evaluate", f"ckpt={damaged_checkpoints['truncated']}",
         f"hydra.run.dir={tmp_path / 'eval'}"],
        env=ENV, cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2
    assert "is damaged or not a checkpoint (RuntimeError: PytorchStreamReader" in run.stdout
    assert "Traceback" not in run.stderr + run.stdout


def _immutable(folder: Path) -> bool:
    """``chattr +i``: unwritable even for root (a read-only run folder; tests run as root here)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    except FileNotFoundError:  # no chattr
        return False


def _run_command(module: str, *overrides: str) -> tuple[int, str]:
    run = subprocess.run([sys.executable, "-m", module, *overrides], env=ENV, cwd=REPO,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    return run.returncode, run.stdout + run.stderr


@pytest.mark.slow
def test_unwritable_run_folder_is_one_line_before_hydra_writes(tmp_path, synthetic_root):
    """Hydra makes the run folder and opens its log file there before the command runs; a folder
    under a file, or a read-only one, gave Hydra's traceback (NotADirectoryError / "Unable to
    configure handler 'file'")."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cases = [("chexnet_pl.train", "hydra.run.dir", blocker / "run",
              ("experiment=demo", f"data.root={synthetic_root}", "data.synthetic=null")),
             ("chexnet_pl.prepare", "hydra.sweep.dir", blocker / "sweep",
              ("-m", f"root={synthetic_root}"))]  # fmt: skip
    read_only = tmp_path / "read_only"
    try:
        if _immutable(read_only):  # as root, only an immutable folder refuses writes
            cases.append(("chexnet_pl.prepare", "hydra.run.dir", read_only,
                          (f"root={synthetic_root}",)))  # fmt: skip
        for module, key, folder, overrides in cases:
            status, output = _run_command(module, *overrides, f"{key}={folder}")
            assert status == 2, (module, folder, output[-2000:])
            assert f"cannot write to the run folder {folder}: " in output, output[-2000:]
            assert f"Choose a writable one with {key}=" in output
            assert "Traceback" not in output and "Error executing job" not in output
    finally:
        subprocess.run(["chattr", "-i", str(read_only)], capture_output=True)


def test_localize_without_data_root_never_reads_the_current_folder(
    model_checkpoint, synthetic_root, tmp_path, monkeypatch
):
    from chexnet_pl.localize import localize

    monkeypatch.chdir(tmp_path)  # a box list here must not be picked up
    shutil.copy(synthetic_root / "BBox_List_2017.csv", tmp_path / "BBox_List_2017.csv")
    cfg = _compose("localize", tmp_path / "out", f"ckpt={model_checkpoint}")
    with pytest.raises(DataError, match=r"^give data.root=/path/to/nih .*does not name one"):
        localize(cfg)


@pytest.mark.slow  # over ~3 s: the slow tier keeps make test-fast under 3 min
def test_predict_a_folder_with_unreadable_files(model_checkpoint, synthetic_root, tmp_path):
    """Every readable image is predicted; the others are listed with their reason."""
    from chexnet_pl.predict import predict

    folder = tmp_path / "xrays"
    folder.mkdir()
    good = sorted((synthetic_root / "images").iterdir())[:2]
    for path in good:
        shutil.copy(path, folder / path.name)
    png = good[0].read_bytes()
    bad = {"empty.png": b"", "notes.png": b"patient notes\n", "cut.png": png[: len(png) // 2],
           "corrupt.png": _corrupt_middle(png)}  # fmt: skip
    for name, content in bad.items():
        (folder / name).write_bytes(content)
    out = tmp_path / "out"
    predict(_compose("predict", out, f"ckpt={model_checkpoint}", f"images={folder}",
                     f"out={out}", "image_size=32"))  # fmt: skip
    predicted = pd.read_csv(out / "predictions.csv")
    assert sorted(predicted["Image Index"]) == sorted(p.name for p in good)
    skipped = pd.read_csv(out / "skipped.csv").set_index("Image Index")["reason"]
    assert sorted(skipped.index) == sorted(bad)
    assert skipped["empty.png"] == "empty file (0 bytes)"
    assert skipped["corrupt.png"].startswith("corrupt or truncated")
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"none of the 1 image\(s\) could be read .*empty.png"):
        predict(_compose("predict", tmp_path / "o2", f"ckpt={model_checkpoint}",
                         f"images={only_bad}", "image_size=32"))  # fmt: skip


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:  # a zombie has exited; only its parent (here the container's init) has yet to reap it
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_prepare_workers_exit_when_prepare_is_killed(tmp_path, caplog):
    """SIGKILL the parent mid-build: its decoding processes must not idle on, orphaned; a rerun
    resumes from the chunks that were finished."""
    import cv2

    from chexnet_pl.data.cache import open_cache
    from chexnet_pl.data.prepare import build_cache

    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    big = tmp_path / "big.png"  # 2048 px of noise: ~50 ms to decode, so the build takes seconds
    noise = np.random.default_rng(0).integers(0, 256, (2048, 2048), dtype=np.uint8)
    cv2.imwrite(str(big), noise, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    for i in range(120):
        os.link(big, root / "images" / f"{i:08d}_000.png")
    process = subprocess.Popen(
        [sys.executable, "-m", "chexnet_pl.prepare", f"root={root}", "size=32", "workers=2",
         "chunk_size=1", "progress=false", f"hydra.run.dir={tmp_path / 'run'}"],
        env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    status = root / "prepared" / "32px.partial" / "status.u8"
    deadline, workers = time.time() + 180, []
    while time.time() < deadline and process.poll() is None:
        workers = _children(process.pid)
        if len(workers) >= 2 and status.exists() and any(status.read_bytes()):
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL, "prepare ended before it could be killed"
    done = sum(1 for b in status.read_bytes() if b)
    assert len(workers) >= 2 and 0 < done < 120
    deadline = time.time() + 20
    while any(_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if _alive(pid)], "orphaned workers are still running"
    with caplog.at_level(logging.INFO):
        folder = build_cache(root, size=32, workers=1, progress=False)
    assert "resuming" in caplog.text and "already done" in caplog.text
    cache = open_cache(folder, 32)
    assert cache.count == 120 and (cache.index["status"] == "ok").all()
