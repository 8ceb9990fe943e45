"""``model.optimizer`` and ``model.scheduler`` as a class and its keyword arguments: a short name
or any class path, the section's settings passed where the class takes them, further arguments
added with ``+``; checkpoints keep plain values (weights_only), and older ones load and resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import compose_train_config, make_model, tiny_overrides
from torch.utils.data import DataLoader

from chexnet_pl.checkpoints.lightning_io import AtomicCheckpointIO
from chexnet_pl.checkpoints.runs import load_run
from chexnet_pl.errors import ConfigError
from chexnet_pl.models.module import CheXNetModule
from chexnet_pl.settings import check_train_config


def test_a_class_path_and_its_own_arguments_build_the_optimizer_and_schedule():
    model = make_model(
        optimizer={"name": "torch.optim.RAdam", "lr": 3e-4, "decoupled_weight_decay": True},
        scheduler={"name": "torch.optim.lr_scheduler.StepLR", "step_size": 2, "gamma": 0.5},
    )
    config = model.configure_optimizers()
    optimizer, entry = config["optimizer"], config["lr_scheduler"]
    assert isinstance(optimizer, torch.optim.RAdam)
    group = optimizer.param_groups[0]
    assert group["lr"] == 3e-4 and group["decoupled_weight_decay"] is True
    assert tuple(group["betas"]) == (0.9, 0.999)  # the section's betas: RAdam takes them
    assert isinstance(entry["scheduler"], torch.optim.lr_scheduler.StepLR)
    assert entry["scheduler"].step_size == 2 and entry["scheduler"].gamma == 0.5
    assert "monitor" not in entry  # only a scheduler that reads a metric watches one
    # Plain values in the checkpoint's settings, the added arguments beside the others.
    assert model.hparams.optimizer["decoupled_weight_decay"] is True
    assert model.hparams.scheduler["step_size"] == 2 and "extra" not in model.hparams.optimizer


def test_a_short_name_takes_added_arguments_too():
    adam = make_model(optimizer={"amsgrad": True}).configure_optimizers()["optimizer"]
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["amsgrad"] is True
    cosine = make_model(scheduler={"name": "cosine", "T_max": 7}).configure_optimizers()
    assert cosine["lr_scheduler"]["scheduler"].T_max == 7  # given, not the run's epochs


def test_wrong_classes_and_arguments_are_named_with_what_would_do():
    cases = {
        "model.optimizer.amsgrd is not a setting; did you mean model.optimizer.amsgrad?":
            {"optimizer": {"amsgrd": True}},
        "model.optimizer.name='torch.optim.Adamm' cannot be imported":
            {"optimizer": {"name": "torch.optim.Adamm"}},
        "model.optimizer.name='torch.nn.Linear' is not a torch.optim.Optimizer":
            {"optimizer": {"name": "torch.nn.Linear"}},
        "model.scheduler.name='torch.optim.SGD' is not a torch.optim.lr_scheduler.LRScheduler":
            {"scheduler": {"name": "torch.optim.SGD"}},
        "model.scheduler.step_size is not a setting":  # ``none`` takes no arguments
            {"scheduler": {"name": "none", "step_size": 2}},
    }  # fmt: skip
    for message, settings in cases.items():
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("?", r"\?")):
            make_model(**settings)
    with pytest.raises(ConfigError, match=r"or the path of a torch.optim.Optimizer class"):
        make_model(optimizer={"name": "radam"})


def test_the_command_line_takes_a_class_path_and_added_arguments(tmp_path, synthetic_root):
    def composed(*extra: str):
        return compose_train_config(tmp_path / "run", [*tiny_overrides(synthetic_root), *extra])

    check_train_config(composed("model.optimizer.name=torch.optim.NAdam",
                                "+model.optimizer.momentum_decay=0.004"))  # fmt: skip
    with pytest.raises(ConfigError, match=r"model.optimizer.momentum_dcay is not a setting; did "
                                          r"you mean model.optimizer.momentum_decay"):  # fmt: skip
        check_train_config(composed("model.optimizer.name=torch.optim.NAdam",
                                    "+model.optimizer.momentum_dcay=0.004"))  # fmt: skip


def _loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8, generator=generator)
    labels = torch.tensor([[1.0] * 15, [0.0] * 15])
    samples = [{"img": images[i], "lab": labels[i], "name": f"{i}.png"} for i in range(2)]
    return DataLoader(samples, batch_size=2)


def _trainer(root: Path, epochs: int) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=root, plugins=[AtomicCheckpointIO()],
    )  # fmt: skip


@pytest.mark.slow  # trains two steps
def test_a_checkpoint_written_before_loads_and_resumes(tmp_path):
    """A checkpoint as this project wrote it before the model carried its image size, with the
    optimizer by name (``{name: adam, ...}``): read back, and resumed where it stopped."""
    trainer = _trainer(tmp_path, epochs=1)
    trainer.fit(make_model(backbone="resnet18"), _loader(), _loader())
    new = tmp_path / "new.ckpt"
    trainer.save_checkpoint(new)
    checkpoint = torch.load(new, weights_only=True)
    del checkpoint["hyper_parameters"]["image_size"]
    assert checkpoint["hyper_parameters"]["optimizer"]["name"] == "adam"
    checkpoint["datamodule_hyper_parameters"] = {"image_size": 64}
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)

    run = load_run(old, device="cpu")
    assert run.image_size == 64 and run.model.hparams.optimizer["name"] == "adam"
    model = CheXNetModule.load_from_checkpoint(old)
    resumed = _trainer(tmp_path, epochs=2)
    resumed.fit(model, _loader(), _loader(), ckpt_path=old)
    optimizer = resumed.optimizers[0]
    assert type(optimizer) is torch.optim.Adam and resumed.current_epoch == 2
    steps = {float(state["step"]) for state in optimizer.state.values()}
    assert steps == {2.0}  # the first epoch's step restored, the second's added
