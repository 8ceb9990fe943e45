"""Every registered backbone: builds with 15 outputs, trains a step with a real Trainer, round-trips
through a checkpoint, gives heat maps of the input's size; per-family ImageNet keys, GoogLeNet's
input scale and auxiliary heads, FreezeBackbone and init_from beyond DenseNet, the experiment
configs, and a real Hydra sweep across two backbones with its summary table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from conftest import compose_train_config, make_model
from torch.utils.data import DataLoader

from chexnet_pl.callbacks import FreezeBackbone
from chexnet_pl.errors import ChexnetError, ConfigError, WeightsError
from chexnet_pl.models.backbones import BACKBONES, load_imagenet_weights
from chexnet_pl.models.init_from import init_from_checkpoint
from chexnet_pl.models.input_contract import InputNormalizer, create_normalizer
from chexnet_pl.models.module import AUX_LOSS_WEIGHT, CheXNetModule
from chexnet_pl.models.network import ChestXrayNet
from chexnet_pl.models.optim import build_optimizer
from chexnet_pl.visualization.heatmaps import (
    CAMUnavailableError,
    class_activation_maps,
    grad_cam,
    heatmaps,
)

# What torchvision's ImageNet weights expect (their metadata), as the reference network is fed.
IMAGENET = BACKBONES["googlenet"].weights.transforms()
IMAGENET_MEAN, IMAGENET_STD = tuple(IMAGENET.mean), tuple(IMAGENET.std)
REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
NAMES = sorted(BACKBONES)
WITHOUT_CAM = {"alexnet", "convnext_tiny"}  # an MLP head; LayerNorm before the linear layer
SIZE = 64  # AlexNet needs at least 63 px


def generated_loader(batch_size: int = 2, seed: int = 0) -> DataLoader:
    """One batch of random 64 px uint8 gray images with labels of both kinds in every class."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch_size, 1, SIZE, SIZE), dtype=torch.uint8, generator=generator)  # fmt: skip
    labels = torch.zeros(batch_size, 15)
    labels[::2] = 1.0
    samples = [{"img": images[i], "lab": labels[i], "name": f"generated_{i}.png"} for i in range(batch_size)]  # fmt: skip
    return DataLoader(samples, batch_size=batch_size)


def one_step_trainer(root: Path, callbacks: list | None = None) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", max_steps=1, limit_val_batches=0, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=root, callbacks=callbacks or [],
    )  # fmt: skip


def images(count: int = 2, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 1, SIZE, SIZE), dtype=torch.uint8, generator=generator)


def test_the_registry_holds_the_promised_backbones():
    promised = {"densenet121", "densenet169", "densenet201", "resnet18", "resnet50", "alexnet",
                "googlenet", "efficientnet_b0", "convnext_tiny"}  # fmt: skip
    assert promised <= set(BACKBONES)
    with pytest.raises(ConfigError, match="model.backbone='vgg99' is not a valid setting; use"):
        make_model(backbone="vgg99")


@pytest.fixture(scope="module", params=NAMES)
def trained(request, tmp_path_factory):
    """``name``'s module before and after one training step on generated data, and its checkpoint."""
    name = request.param
    torch.manual_seed(0)
    model = make_model(backbone=name, pretrained=False, scheduler={"name": "none"})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    root = tmp_path_factory.mktemp(name)
    trainer = one_step_trainer(root)
    trainer.fit(model, train_dataloaders=generated_loader())
    checkpoint = root / "one_step.ckpt"
    trainer.save_checkpoint(checkpoint, weights_only=True)
    return name, model.eval(), before, trainer, checkpoint


def test_builds_with_15_outputs_and_trains_one_step(trained):
    name, model, before, trainer, _ = trained
    assert trainer.global_step == 1
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    with torch.no_grad():
        logits = model(images())
    assert logits.shape == (2, 15) and torch.isfinite(logits).all()
    assert model.net.classifier.out_features == 15
    after = model.state_dict()
    first_feature_weight = next(k for k, _ in model.net.features.named_parameters())
    for key in ("net.classifier.weight", f"net.features.{first_feature_weight}"):
        assert not torch.equal(after[key], before[key]), f"{name}: {key} did not train"
    aux_layers = [n for n in model.net.output_layer_names() if n.startswith("aux_heads.")]
    for layer in aux_layers:  # GoogLeNet's auxiliary classifiers are trained too
        assert not torch.equal(after[f"net.{layer}.weight"], before[f"net.{layer}.weight"])
    assert ("train/aux_loss" in trainer.callback_metrics) == bool(aux_layers)


def test_checkpoint_round_trip_gives_identical_outputs(trained):
    name, model, _, _, checkpoint = trained
    loaded = CheXNetModule.load_from_checkpoint(checkpoint).eval()
    assert loaded.hparams.backbone == name
    batch = images()
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), model(batch), rtol=0, atol=0)


def test_heat_maps_have_the_input_size(trained):
    name, model, _, _, _ = trained
    batch = images()
    maps = grad_cam(model.net, batch, class_index=3)
    assert maps.shape == (2, SIZE, SIZE) and torch.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
    assert heatmaps(model.net, batch, [3], "auto").shape == (2, 1, SIZE, SIZE)
    with torch.no_grad():
        features = model.net.forward_features(model.net.prepare_input(batch))
        logits = model.net.forward_head(features)
    assert model.net.cam_available == (name not in WITHOUT_CAM)
    if model.net.cam_available:
        assert class_activation_maps(model.net, batch).shape == (2, 15, SIZE, SIZE)
    else:
        ran = []
        hook = model.net.features.register_forward_pre_hook(lambda m, args: ran.append(m))
        with pytest.raises(CAMUnavailableError, match=rf"{name}'s head is .*method=gradcam") as err:
            heatmaps(model.net, batch, [3], "cam")
        hook.remove()
        assert isinstance(err.value, ChexnetError)  # the commands print it as one line
        assert ran == []  # refused up front, not somewhere inside the network
    if model.net.classifier.in_features == features.shape[1]:  # not AlexNet's MLP
        # CAM's premise: the mean over positions of the classifier at each position, plus the
        # bias, is the logit. It holds exactly where CAM is offered and fails where it is refused.
        raw = torch.einsum("kc,bchw->bkhw", model.net.classifier.weight, features)
        from_cam = raw.mean((-2, -1)) + model.net.classifier.bias
        assert torch.allclose(from_cam, logits, atol=1e-4, rtol=1e-4) == model.net.cam_available


@pytest.mark.parametrize("name", NAMES)
def test_imagenet_weights_load_per_family(name, monkeypatch):
    """torchvision's download path, with a stand-in ImageNet state_dict: every non-head weight lands;
    a file without the classifier loads; a file of another architecture is refused by name."""
    spec = BACKBONES[name]
    torch.manual_seed(1)
    reference_network = spec.constructor(weights=None, **spec.constructor_kwargs)
    reference = reference_network.state_dict()
    requested = []

    def fake_download(url, **kwargs):
        requested.append(url)
        return reference

    # A file without the replaced layers loads; one with a key the architecture lacks does not.
    headless = {k: v for k, v in reference.items() if not k.startswith(spec.replaced_keys)}
    load_imagenet_weights(reference_network, headless, name)
    with pytest.raises(WeightsError, match=rf"do not match the architecture.*extra.weight.*for {name}\?"):  # fmt: skip
        load_imagenet_weights(reference_network, {**reference, "extra.weight": torch.zeros(1)}, name)  # fmt: skip
    parts = spec.build(reference_network, 15)  # these weights, this project's names
    expected = {
        f"{part}.{key}": value
        for part, module in (("features", parts.features), ("pool", parts.pool),
                             ("pre_logits", parts.pre_logits),
                             ("aux_heads", torch.nn.ModuleDict(dict(parts.aux_heads))))
        for key, value in module.state_dict().items()
    }  # fmt: skip

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    net = ChestXrayNet({"backbone": name}, [f"c{i}" for i in range(15)], pretrained=True)
    assert requested == [spec.weights.url] and net.classifier.out_features == 15
    new_layers = tuple(f"{layer}." for layer in net.output_layer_names())
    loaded = {k: v for k, v in net.state_dict().items() if not k.startswith(new_layers)}
    assert loaded.keys() == {k for k in expected if not k.startswith(new_layers)}
    assert not [k for k, v in loaded.items() if not torch.equal(v, expected[k])]


def test_googlenet_layers_see_the_input_their_imagenet_weights_expect():
    """torchvision's ImageNet GoogLeNet re-normalises ImageNet-normalised input (transform_input);
    this project normalises by 0.5/0.5 instead, which must give its layers the same tensor."""
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.googlenet(
        weights=None, aux_logits=False, transform_input=True, init_weights=True
    ).eval()
    net = ChestXrayNet({"backbone": "googlenet"}, [f"c{i}" for i in range(15)]).eval()
    net.features.load_state_dict(
        {k: v for k, v in reference.state_dict().items() if not k.startswith(("fc.", "aux"))}
    )
    seen = {}
    reference.inception5b.register_forward_hook(lambda m, i, o: seen.setdefault("features", o))
    batch = images()
    with torch.no_grad():
        reference(InputNormalizer(IMAGENET_MEAN, IMAGENET_STD)(batch))
        ours = net.forward_features(create_normalizer("googlenet")(batch))
    torch.testing.assert_close(ours, seen["features"], atol=1e-5, rtol=1e-4)


def test_googlenet_aux_heads_add_to_the_training_loss_only():
    torch.manual_seed(0)
    model = make_model(backbone="googlenet", channels_last=False)
    calls = []
    for head in model.net.aux_heads.values():
        head.register_forward_hook(lambda m, i, o: calls.append(m))
    batch = next(iter(generated_loader()))
    model.train()
    torch.manual_seed(5)
    loss = model.training_step(batch, 0)
    assert len(calls) == 2
    torch.manual_seed(5)  # the same dropout masks
    logits, aux_logits = model.net.forward_with_aux(model.net.prepare_input(batch["img"]))
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = bce(logits, batch["lab"]) + AUX_LOSS_WEIGHT * sum(bce(a, batch["lab"]) for a in aux_logits)  # fmt: skip
    torch.testing.assert_close(loss, expected)
    calls.clear()
    model.eval()
    with torch.no_grad():
        model(batch["img"])
        model.predict_proba(batch["img"])
    grad_cam(model.net, batch["img"], 0)
    class_activation_maps(model.net, batch["img"])
    assert calls == []  # never used to predict or to explain


@pytest.mark.slow
@pytest.mark.parametrize("name", ["googlenet", "alexnet"])
def test_freeze_backbone_trains_the_head_only(name, tmp_path):
    """Frozen: ``features`` keep weights and batch-norm statistics; the whole head trains
    (AlexNet's fc6/fc7, GoogLeNet's auxiliary classifiers)."""
    torch.manual_seed(0)
    model = make_model(backbone=name, scheduler={"name": "none"})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    one_step_trainer(tmp_path, [FreezeBackbone(epochs=1)]).fit(model, generated_loader())
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and not any(k.startswith("net.features.") for k in changed)
    assert "net.classifier.weight" in changed
    expected = {
        "alexnet": "net.pre_logits.fc6.weight",
        "googlenet": "net.aux_heads.aux1.fc2.weight",
    }
    assert expected[name] in changed


def test_init_from_reinitialises_every_output_layer(tmp_path):
    """A 14-output GoogLeNet into a 15-output one: body copied; classifier and aux outputs new."""
    source = make_model(backbone="googlenet", include_no_finding=False)
    path = tmp_path / "fourteen.ckpt"
    torch.save({"state_dict": source.state_dict(), "hyper_parameters": dict(source.hparams)}, path)
    target = make_model(backbone="googlenet", include_no_finding=True)
    init_from_checkpoint(target, path)
    torch.testing.assert_close(target.net.features.conv1.conv.weight, source.net.features.conv1.conv.weight)  # fmt: skip
    torch.testing.assert_close(target.net.aux_heads.aux2.fc1.weight, source.net.aux_heads.aux2.fc1.weight)  # fmt: skip
    assert target.net.aux_heads.aux1.fc2.out_features == 15


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_config_composes(experiment, tmp_path):
    cfg = compose_train_config(tmp_path, [f"experiment={experiment}", "data.root=/data/nih"])
    spec = BACKBONES[cfg.model.backbone]
    if experiment in {s.family for s in BACKBONES.values()}:
        assert spec.family == experiment and cfg.model.pretrained
    assert int(cfg.data.batch_size) > 0 and int(cfg.data.image_size) >= 63
    build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg.model.optimizer)
    assert cfg.model.scheduler.name in ("plateau", "cosine", "none")
    assert cfg.callbacks.visualization.method == "auto"  # heat maps for any backbone
    # Switching the backbone is one override, with any recipe.
    other = compose_train_config(tmp_path, [f"experiment={experiment}", "data.root=/data/nih", "model.backbone=resnet50"])  # fmt: skip
    assert other.model.backbone == "resnet50"


@pytest.mark.slow
def test_sweep_across_backbones_writes_the_summary_table(synthetic_root, tmp_path):
    """A real Hydra multirun over two small backbones; AlexNet's heat maps (no CAM) by Grad-CAM."""
    sweep_dir = tmp_path / "sweep"
    command = [
        sys.executable, "-m", "chexnet_pl.train", "-m", "experiment=demo", "model.backbone=resnet18,alexnet",
        f"data.root={synthetic_root}", "data.synthetic=null", f"data.image_size={SIZE}", "data.batch_size=8",
        "data.num_workers=0", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=2", "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false",
        "callbacks.visualization.n_images=1", "test=false", f"hydra.sweep.dir={sweep_dir}",
    ]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = pd.read_csv(sweep_dir / "summary.csv")
    assert summary["status"].tolist() == ["COMPLETED", "COMPLETED"]
    backbones = {o.split("model.backbone=")[1].split()[0]: row for row, o in enumerate(summary["overrides"])}  # fmt: skip
    assert set(backbones) == {"resnet18", "alexnet"}
    assert summary["best_val_auroc"].notna().all() and summary["checkpoint"].notna().all()
    for name, row in backbones.items():
        checkpoint = torch.load(
            summary.loc[row, "checkpoint"], map_location="cpu", weights_only=True
        )
        assert checkpoint["hyper_parameters"]["backbone"] == name
        run = Path(summary.loc[row, "output_dir"])
        assert len(list((run / "visualizations" / "epoch_000").glob("*.png"))) == 1
    assert "sweep summary" in result.stderr + result.stdout


@pytest.mark.slow
def test_compiled_training_forward_keeps_checkpoint_keys_and_eager_eval(tmp_path):
    """compile=true: the training forward goes through torch.compile (the eager backend here,
    which traces like inductor without generating code); weights and outputs stay the same."""
    torch.manual_seed(0)
    plain = make_model(backbone="resnet18")
    torch.manual_seed(0)
    compiled = make_model(
        backbone="resnet18", pretrained=False, compile=True, compile_backend="eager"
    )
    for model in (plain, compiled):
        model.configure_optimizers = lambda m=model: torch.optim.SGD(m.parameters(), lr=0.01)
        one_step_trainer(tmp_path).fit(model, generated_loader())
    assert compiled._train_forward is not None and plain._train_forward is None
    assert list(compiled.state_dict()) == list(plain.state_dict())
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(compiled.state_dict()[key], value, msg=key)
    assert heatmaps(compiled.eval().net, images(), [0], "auto").shape[-2:] == (SIZE, SIZE)


def test_backbone_too_small_for_the_images_stops_before_training(make_cfg):
    from chexnet_pl.errors import TrainingError
    from chexnet_pl.train import train

    cfg = make_cfg("model.backbone=alexnet", "data.image_size=32")
    with pytest.raises(TrainingError, match=r"alexnet cannot take 32 px images.*data\.image_size"):
        train(cfg)
