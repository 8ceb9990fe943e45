"""The model carries its input contract (trained size, smallest size, mean/std, output names), read
from torchvision's weights metadata; every command asks ``input_size`` what size to run it at."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model, random_checkpoint

from chexnet_pl.checkpoints.runs import load_run
from chexnet_pl.config_defaults import shipped
from chexnet_pl.errors import ConfigError, ServingError, TrainingError
from chexnet_pl.models.backbones import BACKBONES
from chexnet_pl.models.input_contract import input_size
from chexnet_pl.models.network import ChestXrayNet
from chexnet_pl.serving.backends import load_backend


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_the_smallest_input_and_normalisation_come_from_the_weights_metadata(name):
    spec = BACKBONES[name]
    model = make_model(backbone=name, image_size=max(spec.min_size, 32))
    contract = model.input_contract
    assert contract.min_size == max(spec.weights.meta["min_size"])
    assert contract.class_names == tuple(model.class_names)
    if name == "googlenet":  # built without torchvision's input transform, which it folds in
        assert contract.mean == contract.std == (0.5, 0.5, 0.5)
    else:
        transforms = spec.weights.transforms()
        assert (contract.mean, contract.std) == (tuple(transforms.mean), tuple(transforms.std))
    torch.testing.assert_close(model.net.normalizer.mean.flatten(), torch.tensor(contract.mean))
    # The metadata is exact for these networks: the smallest size runs, one pixel less does not.
    net = ChestXrayNet({"backbone": name}, ["A", "B", "C"]).eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 1, contract.min_size, contract.min_size)).shape == (1, 3)
        if contract.min_size > 1:
            with pytest.raises(RuntimeError):
                net(torch.zeros(1, 1, contract.min_size - 1, contract.min_size - 1))


def test_input_size_is_the_trained_size_unless_a_command_asks_for_another():
    model = make_model(backbone="alexnet", image_size=224)
    assert model.hparams.image_size == 224 and model.input_contract.image_size == 224
    assert input_size(model) == 224 and input_size(model, 96) == 96
    with pytest.raises(
        TrainingError, match=r"^alexnet cannot take 32 px images \(its smallest input is 63 px\); "
                             r"give a larger data.image_size=$"
    ):  # fmt: skip
        input_size(model, 32, setting="data.image_size", error=TrainingError)
    untrained = make_model()  # built in Python without data: it does not know a size
    assert untrained.input_contract.image_size is None
    with pytest.raises(ConfigError, match="does not say what image size it was trained at"):
        input_size(untrained)
    assert input_size(untrained, 64) == 64
    with pytest.raises(ConfigError, match=r"model.image_size=0 is out of range"):
        make_model(image_size=0)


def test_checkpoints_carry_the_size_and_older_ones_have_it_derived(tmp_path):
    def saved(path, model, data_settings):
        torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                    "datamodule_hyper_parameters": data_settings}, path)  # fmt: skip
        return load_run(path, device="cpu")

    carried = saved(tmp_path / "new.ckpt", make_model(image_size=96), {"image_size": 64})
    assert carried.image_size == input_size(carried.model) == 96  # the model's own word
    assert carried.model.input_contract.image_size == 96
    older = random_checkpoint(tmp_path / "older.ckpt", image_size=48)  # no size in the model
    assert load_run(older, device="cpu").image_size == 48  # its data's
    imported = saved(tmp_path / "imported.ckpt", make_model(), {})
    assert imported.image_size == shipped("data")["image_size"]


def test_a_size_the_backbone_cannot_take_stops_serving_before_it_starts(tmp_path):
    checkpoint = random_checkpoint(tmp_path / "m.ckpt", image_size=64)
    with pytest.raises(ServingError, match=r"densenet121 cannot take 16 px images .*29 px"):
        load_backend(checkpoint, "torch", image_size=16)
    _, card = load_backend(checkpoint, "torch")
    assert card["image_size"] == 64
