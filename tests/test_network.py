"""One network class (``models.network.ChestXrayNet``) and one LightningModule (``CheXNetModule``,
whose ``net`` it is): a training checkpoint keeps exactly the keys, and the parameter order, it
had when the network was three classes, so every checkpoint written before loads, resumes and
initialises runs unchanged; ``load_run`` gives the network itself."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
from conftest import make_model
from torch.utils.data import DataLoader

from chexnet_pl.checkpoints.file_io import read_checkpoint
from chexnet_pl.checkpoints.runs import load_run
from chexnet_pl.models.module import CheXNetModule
from chexnet_pl.models.network import ChestXrayNet
from chexnet_pl.visualization.heatmaps import grad_cam

SIZE = 64

# Recorded from the code before the merge (XrayClassifier, InferenceMethods and a ChestXrayNet of
# the backbone alone): the module's state-dict keys outside ``net.features``, how many keys
# ``net.features`` has, and the SHA-256 of every key (sorted, newline-joined) and of the
# parameter names in ``parameters()`` order (the order optimizer state is saved and resumed in).
OLD_KEYS = {
    "densenet121": {
        "outside_features": [
            "loss_pos_weight", "net.classifier.bias", "net.classifier.weight",
            "val_auroc_best.max_value",
        ],
        "features": 725,
        "keys_sha256": "4958c8bfb40a6fae0eacf0da5973f40348ab3f684cef059d7166c799651d1ac1",
        "parameters": 364,
        "parameters_sha256": "dbcb5703d72600b356b728188c208b3934f905646403c6c2fa512e026173d167",
    },
    "googlenet": {
        "outside_features": [
            "loss_pos_weight",
            *(
                f"net.aux_heads.{head}.{layer}"
                for head in ("aux1", "aux2")
                for layer in (
                    "conv.bn.bias", "conv.bn.num_batches_tracked", "conv.bn.running_mean",
                    "conv.bn.running_var", "conv.bn.weight", "conv.conv.weight", "fc1.bias",
                    "fc1.weight", "fc2.bias", "fc2.weight",
                )
            ),
            "net.classifier.bias", "net.classifier.weight", "val_auroc_best.max_value",
        ],
        "features": 342,
        "keys_sha256": "c4c003decd4fc706b3114352f89255fb02c0cb6383aabb0657adb4221c5000ed",
        "parameters": 187,
        "parameters_sha256": "7808959fc88afb7f9333551c6cf73506de2ba6ec22a92c31644973740503762f",
    },
}  # fmt: skip


def _sha256(names: list[str]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def _loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 1, SIZE, SIZE), dtype=torch.uint8, generator=generator)
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    samples = [{"img": images[i], "lab": labels[i], "name": f"g{i}.png"} for i in range(2)]
    return DataLoader(samples, batch_size=2)


def _check_keys(name: str, keys: list[str], parameter_names: list[str]) -> None:
    expected = OLD_KEYS[name]
    keys = sorted(keys)
    assert [k for k in keys if not k.startswith("net.features.")] == expected["outside_features"]
    assert sum(k.startswith("net.features.") for k in keys) == expected["features"]
    assert _sha256(keys) == expected["keys_sha256"]
    assert not [k for k in keys if k.startswith("net.normalizer")]  # its buffers are not saved
    assert (len(parameter_names), _sha256(parameter_names)) == (
        expected["parameters"], expected["parameters_sha256"],
    )  # fmt: skip


@pytest.mark.parametrize("name", sorted(OLD_KEYS))
def test_module_keeps_the_keys_and_parameter_order_of_the_old_classes(name):
    model = make_model(backbone=name, class_names=["A", "B"])
    _check_keys(name, list(model.state_dict()), [n for n, _ in model.named_parameters()])
    assert type(model.net) is ChestXrayNet


@pytest.fixture(scope="module", params=sorted(OLD_KEYS))
def trained(request, tmp_path_factory):
    """``name``'s module after one real training step at 64 px, and its full checkpoint."""
    name = request.param
    torch.manual_seed(0)
    model = make_model(backbone=name, class_names=["A", "B"], scheduler={"name": "none"})
    root = tmp_path_factory.mktemp(name)
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=1, limit_val_batches=0, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=root,
    )  # fmt: skip
    trainer.fit(model, train_dataloaders=_loader())
    path = root / "one_step.ckpt"
    trainer.save_checkpoint(path)
    return name, model.eval(), path


def test_training_checkpoint_keeps_the_keys_of_the_old_classes(trained):
    name, model, path = trained
    stored = read_checkpoint(path)
    _check_keys(name, list(stored["state_dict"]), [n for n, _ in model.named_parameters()])
    # The optimizer state follows that order: one entry per parameter, resumable as before.
    (group,) = stored["optimizer_states"][0]["param_groups"]
    assert len(group["params"]) == OLD_KEYS[name]["parameters"]


def test_load_run_gives_the_network_with_the_module_outputs(trained):
    name, model, path = trained
    network = load_run(path, device="cpu").model
    assert type(network) is ChestXrayNet and not isinstance(network, pl.LightningModule)
    assert type(model.net) is ChestXrayNet
    assert {f"net.{k}" for k in network.state_dict()} == {
        k for k in read_checkpoint(path)["state_dict"] if k.startswith("net.")
    }
    assert network.class_names == ["A", "B"] and network.hparams.backbone == name
    images = torch.randint(0, 256, (3, 1, SIZE, SIZE), dtype=torch.uint8)
    with torch.no_grad():
        expected = model(images)
        torch.testing.assert_close(network(images), expected, rtol=0, atol=0)
        torch.testing.assert_close(
            network.forward_head(network.forward_features(network.prepare_input(images))),
            expected, rtol=0, atol=0,
        )  # fmt: skip
    torch.testing.assert_close(network.predict_proba(images), torch.sigmoid(expected))
    # Lightning's own loader and resume read the same file into the module.
    loaded = CheXNetModule.load_from_checkpoint(path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), expected, rtol=0, atol=0)


@pytest.mark.slow  # over ~3 s: the slow tier keeps make test-fast under 3 min
def test_grad_cam_explains_the_normalised_input_of_the_network():
    """Grad-CAM (and Score-CAM, which scales its input) run on the network without its
    normaliser, fed the normalised batch: the maps of that network, not of re-normalised input."""
    torch.manual_seed(0)
    network = ChestXrayNet({"backbone": "resnet18"}, ["A", "B"]).eval()
    images = torch.randint(0, 256, (1, 1, SIZE, SIZE), dtype=torch.uint8)
    inner = network.on_normalised_input()
    assert list(inner.parameters()) == list(network.parameters())  # the same layers, shared
    with torch.no_grad():
        torch.testing.assert_close(inner(network.prepare_input(images)), network(images))
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with ScoreCAM(model=inner, target_layers=[network.features]) as explainer:
        reference = explainer(
            input_tensor=network.prepare_input(images).contiguous(),
            targets=[ClassifierOutputTarget(1)],
        )
    reference = torch.from_numpy(reference)
    low = reference.flatten(1).min(1).values[:, None, None]
    high = reference.flatten(1).max(1).values[:, None, None]
    expected = (reference - low) / (high - low).clamp_min(1e-12)
    torch.testing.assert_close(grad_cam(network, images, 1, "scorecam"), expected)


@pytest.mark.slow
def test_the_network_imports_neither_lightning_nor_torchmetrics():
    code = (
        "import sys, chexnet_pl.models.network, chexnet_pl.checkpoints.runs; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pytorch_lightning', 'lightning', 'lightning_fabric', 'torchmetrics')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
