"""``chexnet-export format=safetensors``: the network's weights and a JSON sidecar that rebuilds it.
Read back by ``chexnet_pl.load`` and ``chexnet-predict ckpt=`` with no pickle at all, it predicts,
explains and embeds real NIH images as its checkpoint does (≤ 1e-6); a sidecar naming anything
but the project's own network and backbones, a tensor of another name or shape, and a stale
SHA-256 are refused naming the file."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_config, random_checkpoint

import chexnet_pl
from chexnet_pl.errors import WeightsError
from chexnet_pl.serving.sidecar import read_sidecar, sidecar_path

SIZE = 64
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A ResNet-18 checkpoint in a run's layout, with an evaluation's thresholds beside it."""
    folder = tmp_path_factory.mktemp("safetensors_run")
    checkpoint = random_checkpoint(folder / "checkpoints" / "best.ckpt", "resnet18", SIZE, seed=4)
    names = chexnet_pl.load(checkpoint).class_names
    thresholds = np.linspace(0.3, 0.6, len(names))
    thresholds[3] = np.nan  # undefined on validation: no verdict, in the export too
    pd.DataFrame(
        {
            "auroc": 0.7,
            "threshold": thresholds,
            "threshold_rule": "youden",
            "threshold_split": "val",
        },
        index=pd.Index(names, name="class"),
    ).to_csv(folder / "aucs.csv")
    return folder


@pytest.fixture(scope="module")
def exported(run) -> Path:
    """``chexnet-export ckpt=... format=safetensors`` (the command's function on the shipped
    config, composed by Hydra)."""
    from chexnet_pl.export import export

    checkpoint = run / "checkpoints" / "best.ckpt"
    out = export(
        compose_config("export", run / "hydra", f"ckpt={checkpoint}", "format=safetensors")
    )
    assert out == checkpoint.with_suffix(".safetensors")
    return out


def images(nih_sample: Path, count: int = 4) -> list[Path]:
    return sorted((nih_sample / "images").glob("*.png"))[:count]


def test_the_export_is_weights_and_a_sidecar_that_rebuilds_the_network(run, exported):
    from safetensors import safe_open

    card = read_sidecar(exported)
    assert card["format"] == "safetensors" and card["file"] == "best.safetensors"
    assert card["network"] == {
        "architecture": "ChestXrayNet", "backbone": "resnet18", "image_size": SIZE,
        "classes": chexnet_pl.load(run / "checkpoints" / "best.ckpt").class_names,
        "channels_last": True,
    }  # fmt: skip
    assert card["model_sha256"] == hashlib.sha256(exported.read_bytes()).hexdigest()
    assert card["thresholds"]["Edema"] is None  # undefined stays undefined
    assert card["calibration"] is None  # its evaluation fitted none
    with safe_open(str(exported), "pt") as stored:  # tensors only, the network's names
        assert "net.classifier.weight" in set(stored.keys())
    assert (exported.parent / "MODEL_CARD.md").is_file()


def test_it_predicts_explains_and_embeds_as_its_checkpoint(run, exported, nih_sample):
    paths = images(nih_sample)
    checkpoint = chexnet_pl.load(run / "checkpoints" / "best.ckpt")
    model = chexnet_pl.load(exported)
    assert model.backend == "safetensors" and model.network is not None
    columns = [f"prob_{n}" for n in checkpoint.class_names]
    ours, theirs = model.predict(paths), checkpoint.predict(paths)
    assert np.abs(ours[columns].to_numpy() - theirs[columns].to_numpy()).max() <= TOLERANCE
    pd.testing.assert_frame_equal(
        ours.filter(like="above_"), theirs.filter(like="above_")
    )  # the same thresholds: the sidecar records the aucs.csv the checkpoint's run has
    assert model.thresholds == pytest.approx(checkpoint.thresholds, nan_ok=True)
    assert np.abs(model.features(paths) - checkpoint.features(paths)).max() <= TOLERANCE
    heat = model.explain(paths[0], "Effusion", method="gradcam")  # all of PyTorch's methods
    assert np.abs(heat - checkpoint.explain(paths[0], "Effusion", method="gradcam")).max() <= 1e-5


@pytest.mark.slow  # over ~8 s: the slow tier keeps make test-fast under 3 min
def test_chexnet_predict_takes_it_as_ckpt(run, exported, nih_sample, tmp_path):
    from chexnet_pl.predict import predict

    paths = images(nih_sample, 3)
    folder = tmp_path / "xrays"
    folder.mkdir()
    for path in paths:
        (folder / path.name).write_bytes(path.read_bytes())
    out = predict(compose_config("predict", tmp_path / "p", f"ckpt={exported}", f"images={folder}"))
    table = pd.read_csv(out / "predictions.csv").set_index("Image Index")
    expected = chexnet_pl.load(run / "checkpoints" / "best.ckpt").predict(paths)
    expected = expected.assign(name=[p.name for p in paths]).set_index("name")
    columns = [c for c in expected if c.startswith("prob_")]
    difference = table.loc[expected.index, columns].to_numpy() - expected[columns].to_numpy()
    assert np.abs(difference).max() <= TOLERANCE


@pytest.mark.slow  # launches the commands
def test_the_commands_export_it_and_predict_with_it(run, nih_sample, tmp_path):
    """``chexnet-export format=safetensors`` then ``chexnet-predict ckpt=<it>``, as a user runs
    them: the probabilities are the checkpoint's."""
    import subprocess

    from conftest import console_script

    checkpoint = run / "checkpoints" / "best.ckpt"
    out = tmp_path / "model.safetensors"
    for name, args in (
        ("export", [f"ckpt={checkpoint}", "format=safetensors", f"out={out}"]),
        ("predict", [f"ckpt={out}", f"image={images(nih_sample, 1)[0]}", f"out={tmp_path / 'p'}"]),
    ):
        result = subprocess.run(
            [*console_script(name), *args, f"hydra.run.dir={tmp_path / name}"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert (tmp_path / "MODEL_CARD.md").is_file()
    table = pd.read_csv(tmp_path / "p" / "predictions.csv")
    expected = chexnet_pl.load(checkpoint).predict(images(nih_sample, 1))
    columns = [c for c in expected if c.startswith("prob_")]
    assert np.abs(table[columns].to_numpy() - expected[columns].to_numpy()).max() <= TOLERANCE


def test_loading_it_unpickles_nothing(exported, nih_sample, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle was used to read a safetensors export")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    model = chexnet_pl.load(exported)
    assert len(model.predict(images(nih_sample, 1))) == 1


@pytest.fixture
def copy_of(exported, tmp_path):
    """A copy of the export and its sidecar, with the sidecar's JSON changed by ``change``."""

    def make(change=None, tensors=None) -> Path:
        path = tmp_path / "m.safetensors"
        data = exported.read_bytes()
        if tensors is not None:
            from safetensors.torch import load, save

            data = save(tensors(load(data)))
        path.write_bytes(data)
        card = json.loads(sidecar_path(exported).read_text())
        card["model_sha256"] = hashlib.sha256(data).hexdigest()  # a crafted, consistent pair
        if change is not None:
            change(card)
        sidecar_path(path).write_text(json.dumps(card))
        return path

    return make


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["network"].update(architecture="os.system"),
         r"names the architecture 'os.system'; only 'ChestXrayNet'"),
        (lambda c: c["network"].update(backbone="torchvision.models.vit_h_14"),
         r"names the backbone 'torchvision.models.vit_h_14', which is not one of chexnet_pl's"),
        (lambda c: c["network"].update(backbone="${oc.env:HOME}"),
         r"names the backbone '\$\{oc.env:HOME\}'"),
        (lambda c: c["network"].update(image_size="64; rm -rf /"), r"image_size='64; rm -rf /'"),
        (lambda c: c["network"].update(classes=["Edema"]), r"does not fit the network .*wrong shape"),
        (lambda c: c.pop("network"), r"'network'\) is missing"),
    ],
    ids=["architecture", "backbone", "interpolation", "image_size", "classes", "no-network"],
)  # fmt: skip
def test_a_hostile_sidecar_is_refused_naming_the_file(copy_of, change, message):
    path = copy_of(change)
    with pytest.raises(WeightsError, match=rf"{path}.*{message}"):
        chexnet_pl.load(path)


def test_an_export_naming_the_earlier_class_reads_the_same(copy_of, exported, nih_sample):
    """Exports written before the network was one class name it ``XrayClassifier``: the same
    tensors (``net.*``), so they load and predict as before."""
    path = copy_of(lambda c: c["network"].update(architecture="XrayClassifier"))
    paths = images(nih_sample, 2)
    ours, theirs = chexnet_pl.load(path).predict(paths), chexnet_pl.load(exported).predict(paths)
    columns = [c for c in theirs.columns if c.startswith("prob_")]
    assert columns and np.array_equal(ours[columns].to_numpy(), theirs[columns].to_numpy())


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        (lambda t: {k: v for k, v in t.items() if k != "net.classifier.bias"},
         r"missing \['net.classifier.bias'\]"),
        (lambda t: {**t, "net.classifier.weight": torch.zeros(3, 3)},
         r"wrong shape \['net.classifier.weight: \(3, 3\) in the file"),
        (lambda t: {**t, "hook": torch.zeros(1)}, r"not the network's \['hook'\]"),
    ],
    ids=["missing", "shape", "extra"],
)  # fmt: skip
def test_tensors_that_are_not_the_networks_are_refused(copy_of, tensors, message):
    path = copy_of(tensors=tensors)
    with pytest.raises(WeightsError, match=rf"{path} does not fit the network .*{message}"):
        chexnet_pl.load(path)


def test_a_stale_sha256_is_refused(copy_of):
    path = copy_of()
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # one weight's bit, the sidecar unchanged
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"m.safetensors.json describes another model than .*m"):
        chexnet_pl.load(path)
    with pytest.raises(WeightsError, match=r"m.safetensors.json not found"):
        sidecar_path(path).unlink()
        chexnet_pl.load(path)
