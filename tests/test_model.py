"""Backbone contract, ImageNet weight loading (local file, local HTTP server, offline), AUROC."""

from __future__ import annotations

import functools
import hashlib
import http.server
import math
import re
import socket
import threading
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torchvision
from conftest import make_model
from sklearn.metrics import roc_auc_score

from chexnet_pl.data.nih_table import class_names
from chexnet_pl.errors import ConfigError, WeightsError
from chexnet_pl.models.backbones import create_backbone
from chexnet_pl.models.metrics import PerClassAUROC, mean_finding_auroc
from chexnet_pl.models.network import ChestXrayNet
from chexnet_pl.models.weights import remap_legacy_densenet_keys

FIFTEEN = [f"c{i}" for i in range(15)]


def test_forward_features_and_head():
    net = ChestXrayNet({"backbone": "densenet121"}, FIFTEEN).eval()
    images = torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8)
    features = net.forward_features(net.prepare_input(images))
    assert features.shape == (2, 1024, 2, 2) and (features >= 0).all()
    logits = net.forward_head(features)
    assert logits.shape == (2, 15)
    torch.testing.assert_close(net(images), logits)
    # Float images in [0, 1] are the same images as their uint8 form.
    torch.testing.assert_close(net(images.float() / 255), logits)
    # The normaliser's buffers are not saved: the network's keys are the backbone's and head's.
    assert {key.split(".")[0] for key in net.state_dict()} == {"features", "classifier"}


def test_module_takes_uint8_gray_and_outputs_logits():
    model = make_model(include_no_finding=False).eval()
    images = torch.randint(0, 256, (3, 1, 64, 64), dtype=torch.uint8)
    logits = model(images)
    assert logits.shape == (3, 14) and torch.isfinite(logits).all()
    probs = model.predict_proba(images)
    torch.testing.assert_close(probs, torch.sigmoid(logits.detach()))
    # Normalisation uses ImageNet statistics on the replicated gray channel.
    x = model.net.prepare_input(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8))
    torch.testing.assert_close(
        x[0, :, 0, 0],
        (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]),
    )


def test_pos_weight_weighs_each_positive_term_of_the_loss():
    """model.pos_weight=true: the loss is BCE with each positive label's term times its class's
    weight (computed here by hand), unknown (NaN) labels left out; false: the plain BCE, whatever
    the stored weights."""
    logits = torch.tensor([[1.5, -0.5, 0.2], [-2.0, 0.7, 3.0]])
    labels = torch.tensor([[1.0, 0.0, float("nan")], [1.0, 1.0, 0.0]])
    weights = [3.0, 0.5, 7.0]

    def by_hand(pos_weight: list[float]) -> float:
        terms = []
        for row in range(2):
            for k in range(3):
                y, p = labels[row, k].item(), 1 / (1 + math.exp(-logits[row, k].item()))
                if not math.isnan(y):
                    terms.append(-(pos_weight[k] * y * math.log(p) + (1 - y) * math.log(1 - p)))
        return sum(terms) / len(terms)

    for setting, expected in ((True, by_hand(weights)), (False, by_hand([1.0, 1.0, 1.0]))):
        model = make_model(backbone="resnet18", class_names=["A", "B", "C"], pos_weight=setting)
        model.loss_pos_weight.copy_(torch.tensor(weights))  # what setup("fit") stores
        assert model._loss(logits, labels).item() == pytest.approx(expected, rel=1e-6), setting
    assert by_hand(weights) > 1.5 * by_hand([1.0, 1.0, 1.0])  # the weights make a difference


def _legacy(state_dict):
    """torchvision's downloadable DenseNet files use 'norm.1' where the module has 'norm1'."""
    return OrderedDict(
        (re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k), v)
        for k, v in state_dict.items()
    )


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory):
    """A DenseNet-121 state_dict in the key format of torchvision's download, saved to a file."""
    torch.manual_seed(7)
    reference = torchvision.models.densenet121().state_dict()
    legacy = _legacy(reference)
    assert any(".norm.1." in k for k in legacy)
    folder = tmp_path_factory.mktemp("weights")
    path = folder / "densenet121-imagenet.pth"
    torch.save(legacy, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    hashed = folder / f"densenet121-{digest[:8]}.pth"
    path.rename(hashed)
    return reference, hashed


def test_remap_legacy_keys_round_trips(imagenet_like):
    reference, _ = imagenet_like
    assert list(remap_legacy_densenet_keys(_legacy(reference))) == list(reference)


def test_local_weights_file_initialises_backbone(imagenet_like):
    reference, path = imagenet_like
    net = ChestXrayNet({"backbone": "densenet121"}, FIFTEEN, weights_path=str(path))
    torch.testing.assert_close(net.features.body.conv0.weight, reference["features.conv0.weight"])
    torch.testing.assert_close(
        net.features.body.denseblock4.denselayer16.norm2.running_var,
        reference["features.denseblock4.denselayer16.norm2.running_var"],
    )
    assert net.classifier.out_features == 15


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_server(imagenet_like):
    _, path = imagenet_like
    handler = functools.partial(_QuietHandler, directory=str(path.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_through_torch_hub_from_local_server(http_server, imagenet_like, tmp_path):
    reference, path = imagenet_like
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        net = create_backbone(
            "densenet121", 15, pretrained=True, weights_url=f"{http_server}/{path.name}"
        )
    finally:
        torch.hub.set_dir(old)
    torch.testing.assert_close(net.features.body.conv0.weight, reference["features.conv0.weight"])
    assert (tmp_path / "hub" / "checkpoints" / path.name).is_file()  # cached for next time


def test_offline_names_both_ways_out(tmp_path):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        with pytest.raises(WeightsError) as err:
            create_backbone(
                "densenet121",
                15,
                pretrained=True,
                weights_url=f"http://127.0.0.1:{port}/densenet121-a639ec97.pth",
            )
    finally:
        torch.hub.set_dir(old)
    message = str(err.value)
    assert "model.weights_path=" in message and "model.pretrained=false" in message


class _NotAStateDict:
    pass


def test_bad_weights_files_are_refused(tmp_path):
    pickled = tmp_path / "pickle.pth"
    torch.save({"state_dict": _NotAStateDict()}, pickled)
    with pytest.raises(WeightsError, match="no arbitrary pickles"):
        create_backbone("densenet121", 15, weights_path=str(pickled))
    other = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), other)
    with pytest.raises(WeightsError, match="do not match the architecture"):
        create_backbone("densenet121", 15, weights_path=str(other))
    with pytest.raises(WeightsError, match="weights file not found"):
        create_backbone("densenet121", 15, weights_path=str(tmp_path / "nope.pth"))
    with pytest.raises(WeightsError, match="unknown backbone 'vgg99'"):
        create_backbone("vgg99", 15)


def test_auroc_matches_scikit_learn():
    rng = np.random.default_rng(0)
    target = (rng.random((300, 15)) < 0.2).astype(int)
    preds = np.clip(target * 0.3 + rng.random((300, 15)) * 0.8, 0, 1).astype(np.float32)
    metric = PerClassAUROC(15)
    for chunk in np.array_split(np.arange(300), 7):  # accumulated over batches
        metric.update(torch.from_numpy(preds[chunk]), torch.from_numpy(target[chunk]))
    per_class = metric.compute()
    expected = [roc_auc_score(target[:, j], preds[:, j]) for j in range(15)]
    np.testing.assert_allclose(per_class.numpy(), expected, atol=1e-6)
    mean = mean_finding_auroc(per_class, class_names())
    assert abs(float(mean) - np.mean(expected[:14])) < 1e-6  # No Finding is not in the mean


def test_auroc_undefined_without_positives():
    metric = PerClassAUROC(3)
    metric.update(
        torch.tensor([[0.9, 0.2, 0.4], [0.1, 0.7, 0.3]]), torch.tensor([[1, 0, 0], [0, 1, 0]])
    )
    per_class = metric.compute()
    assert per_class[:2].tolist() == [1.0, 1.0] and torch.isnan(per_class[2])


def test_optimizer_and_scheduler_choices():
    sgd = make_model(optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4})
    sgd.trainer = None
    config = sgd.configure_optimizers()
    group = config["optimizer"].param_groups[0]
    assert isinstance(config["optimizer"], torch.optim.SGD)
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.01, 0.9, 1e-4)
    scheduler = config["lr_scheduler"]
    assert isinstance(scheduler["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert scheduler["monitor"] == "val/loss" and scheduler["scheduler"].factor == 0.1
    adam = make_model().configure_optimizers()["optimizer"]
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["betas"] == (0.9, 0.999)
    with pytest.raises(ConfigError, match="model.optimizer.name='lbfgs' is not a valid setting"):
        make_model(optimizer={"name": "lbfgs", "lr": 1})


def test_label_list_travels_with_the_model_and_its_checkpoint(tmp_path):
    """Another dataset's labels (CheXpert-like names here) need no change to the model code: the
    list sizes the head, is stored in the checkpoint, and the mean AUROC leaves No Finding out."""
    import pytorch_lightning as pl

    from chexnet_pl.checkpoints.runs import load_run
    from chexnet_pl.models.metrics import mean_finding_auroc

    names = ["Atelectasis", "Cardiomegaly", "Edema", "Pleural Effusion", "No Finding"]
    model = make_model(backbone="resnet18", class_names=names)
    images = torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8)
    assert model.eval()(images).shape == (2, 5)
    assert model.hparams.include_no_finding and model.class_names == names
    trainer = pl.Trainer(max_epochs=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False)  # fmt: skip
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "other.ckpt")
    loaded = load_run(tmp_path / "other.ckpt", device="cpu").model
    assert loaded.class_names == names
    torch.testing.assert_close(loaded(images), model(images))
    per_class = torch.tensor([0.5, 0.6, 0.7, 0.8, 0.1])
    assert mean_finding_auroc(per_class, names).item() == pytest.approx(0.65)
