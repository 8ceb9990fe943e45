"""Files from elsewhere run no code: a checkpoint's stored settings may only pick among the
project's own components. Each hostile checkpoint below is otherwise valid (real weights, the
shipped settings) and names, in one place, something that would run code if it were imported or
built; every reader refuses it by name before importing anything it names.

The payload is a module of this test's own (``hostile_payload``) whose import writes a marker
file, plus ``subprocess.Popen`` with a command that writes another: a refusal that came after an
import or a build would leave a marker behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_config, console_script, make_model, random_checkpoint

from chexnet_pl.checkpoints.file_io import read_checkpoint, read_hparams
from chexnet_pl.checkpoints.runs import datamodule_for, load_run
from chexnet_pl.components import data_modules, foreign_names
from chexnet_pl.data.build import build_datamodule
from chexnet_pl.errors import DataError, WeightsError
from chexnet_pl.models.init_from import init_from_checkpoint
from chexnet_pl.models.module import CheXNetModule

PAYLOAD_MODULE = "hostile_payload"
NIH = "chexnet_pl.data.nih.NIHDataModule"
POOLED = "chexnet_pl.data.pooled.PooledDataModule"


@pytest.fixture
def payload(tmp_path, monkeypatch) -> Path:
    """A module on sys.path whose import writes ``imported.marker``; returns the marker folder."""
    folder = tmp_path / "payload"
    folder.mkdir()
    (folder / f"{PAYLOAD_MODULE}.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(folder / 'imported.marker')!r}).write_text('imported')\n"
        "class Payload:\n"
        "    def __init__(self, *args, **kwargs):\n"
        f"        Path({str(folder / 'built.marker')!r}).write_text('built')\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop(PAYLOAD_MODULE, None)
    yield folder
    sys.modules.pop(PAYLOAD_MODULE, None)


def popen(folder: Path) -> dict:
    """``subprocess.Popen(["touch", <marker>])`` as Hydra-style settings."""
    return {"_target_": "subprocess.Popen", "args": ["touch", str(folder / "popen.marker")]}


def hostile_cases(folder: Path) -> dict[str, tuple[dict, dict]]:
    """name → (hyper_parameters changes, data settings changes): each one door a checkpoint's
    settings could open."""
    return {
        "data module subprocess.Popen": ({}, popen(folder)),
        "data module os.system": ({}, {"_target_": "os.system", "command": "touch x"}),
        "data module builtins.exec": ({}, {"_target_": "builtins.exec", "source": "1"}),
        "data module importlib.import_module": (
            {},
            {"_target_": "importlib.import_module", "name": PAYLOAD_MODULE},
        ),  # fmt: skip
        "data module pickle.loads": ({}, {"_target_": "pickle.loads", "data": "x"}),
        "data module of the payload": ({}, {"_target_": f"{PAYLOAD_MODULE}.Payload"}),
        "a project function, not a data module": (
            {},
            {"_target_": "chexnet_pl.files.atomic_write", "path": str(folder / "x")},
        ),
        "pooled member subprocess.Popen": (
            {},
            {
                "_target_": POOLED,
                "datasets": {"nih": {"_target_": NIH}, "evil": popen(folder)},
                "label_map": {},
            },
        ),  # fmt: skip
        "nested _target_ in a data module's argument": (
            {},
            {"_target_": NIH, "root": popen(folder)},
        ),
        "Hydra's _args_ on a data module": ({}, {"_target_": NIH, "_args_": ["touch", "x"]}),
        "Hydra's _partial_": ({}, {"_target_": NIH, "_partial_": True}),
        "an interpolation": ({}, {"_target_": NIH, "root": "${oc.env:HOME}"}),
        "optimizer subprocess.Popen": ({"optimizer": {"name": "subprocess.Popen"}}, {}),
        "optimizer of the payload": ({"optimizer": {"name": f"{PAYLOAD_MODULE}.Payload"}}, {}),
        "optimizer os.system": ({"optimizer": {"name": "os.system"}}, {}),
        "scheduler importlib.import_module": (
            {"scheduler": {"name": "importlib.import_module"}},
            {},
        ),
        "scheduler of the payload": ({"scheduler": {"name": f"{PAYLOAD_MODULE}.Payload"}}, {}),
        "Lightning's _instantiator": ({"_instantiator": f"{PAYLOAD_MODULE}.Payload"}, {}),
        "a _target_ among the model's settings": ({"extra": popen(folder)}, {}),
    }


def hostile_checkpoint(path: Path, hparams: dict, data: dict) -> Path:
    """A valid checkpoint (random weights, the shipped settings) with ``hparams`` and ``data``
    merged into its settings."""
    random_checkpoint(path, root=str(path.parent / "data"))
    checkpoint = torch.load(path, weights_only=True)
    for key, value in hparams.items():
        current = checkpoint["hyper_parameters"].get(key)
        checkpoint["hyper_parameters"][key] = (
            {**current, **value} if isinstance(current, dict) and isinstance(value, dict) else value
        )
    checkpoint["datamodule_hyper_parameters"].update(data)
    torch.save(checkpoint, path)
    return path


def assert_nothing_ran(folder: Path) -> None:
    assert not list(folder.glob("*.marker")), [p.name for p in folder.glob("*.marker")]
    assert PAYLOAD_MODULE not in sys.modules


def readers(path: Path, tmp_path: Path):
    """Every way the project reads a checkpoint, each a thunk."""
    return {
        "read_checkpoint": lambda: read_checkpoint(path),
        "read_checkpoint lazy": lambda: read_checkpoint(path, lazy=True),
        "read_hparams": lambda: read_hparams(path),
        "load_run": lambda: load_run(path, device="cpu"),
        "CheXNetModule.load_from_checkpoint": lambda: CheXNetModule.load_from_checkpoint(path),
        "init_from": lambda: init_from_checkpoint(make_model(), path),
    }


@pytest.mark.parametrize("case", sorted(hostile_cases(Path("x"))))
def test_every_reader_refuses_a_checkpoint_naming_foreign_code(case, payload, tmp_path):
    hparams, data = hostile_cases(payload)[case]
    path = hostile_checkpoint(tmp_path / "hostile.ckpt", hparams, data)
    for name, read in readers(path, tmp_path).items():
        with pytest.raises(WeightsError, match="not one of chexnet_pl's|may not make Hydra|not an "
                                               "interpolation|names code") as raised:  # fmt: skip
            read()
        assert str(path) in str(raised.value), name
        assert_nothing_ran(payload)


def test_the_refusal_names_each_place(payload, tmp_path):
    path = hostile_checkpoint(
        tmp_path / "hostile.ckpt", {"optimizer": {"name": "subprocess.Popen"}}, popen(payload)
    )
    with pytest.raises(WeightsError) as raised:
        load_run(path, device="cpu")
    message = str(raised.value)
    assert "datamodule_hyper_parameters._target_='subprocess.Popen'" in message
    assert "hyper_parameters.optimizer.name='subprocess.Popen'" in message
    assert "nothing it names was imported" in message


@pytest.mark.slow  # over ~5 s: the slow tier keeps make test-fast under 3 min
def test_the_projects_own_components_still_load(tmp_path):
    """The registry is not a blanket refusal: shipped data modules, the short optimizer and
    scheduler names, and torch.optim's classes (a user's own command line may choose one)."""
    assert NIH in data_modules() and POOLED in data_modules()
    assert "chexnet_pl.data.chexpert.CheXpertDataModule" in data_modules()
    for optimizer, scheduler in [("adamw", "cosine"), ("torch.optim.RAdam", "none"),
                                 ("sgd", "torch.optim.lr_scheduler.StepLR")]:  # fmt: skip
        path = hostile_checkpoint(
            tmp_path / f"{optimizer}.ckpt",
            {"optimizer": {"name": optimizer}, "scheduler": {"name": scheduler}},
            {"_target_": NIH},
        )
        assert read_hparams(path)["optimizer"]["name"] == optimizer
        assert load_run(path, device="cpu").model.class_names
    # A pooled run stores its members' configs as composed (``_convert_: all``): not code.
    assert not foreign_names(
        {"_target_": POOLED, "datasets": {"a": {"_target_": NIH, "_convert_": "all"}}}
    )


def test_a_data_module_with_arguments_it_does_not_take_is_refused_by_name(payload, tmp_path):
    """A project data module given arguments of someone else's choosing: refused naming them,
    not passed on (and not a TypeError from deep inside)."""
    path = hostile_checkpoint(tmp_path / "args.ckpt", {}, {"_target_": NIH, "args": ["touch", "x"],
                                                          "shell": True})  # fmt: skip
    run = load_run(path, device="cpu")
    with pytest.raises(DataError, match=r"data settings \['args', 'shell'\] are not settings of "
                                        r"chexnet_pl\.data\.nih\.NIHDataModule"):  # fmt: skip
        datamodule_for(run, {}, tmp_path / "out")
    with pytest.raises(DataError, match=r"\['command'\] are not settings"):
        build_datamodule({"_target_": NIH, "root": str(tmp_path), "command": "touch x"})
    assert_nothing_ran(payload)


def test_evaluate_and_visualize_refuse_before_importing(payload, tmp_path):
    """The commands' own entry points (in process): the first thing they do with ``ckpt=`` is
    read it, and the read refuses."""
    from chexnet_pl.evaluate import evaluate
    from chexnet_pl.visualize import visualize

    path = hostile_checkpoint(tmp_path / "hostile.ckpt", {}, popen(payload))
    for command, run, extra in (("evaluate", evaluate, []),
                                ("visualize", visualize, ["label=Effusion"])):  # fmt: skip
        cfg = compose_config(command, tmp_path / command, f"ckpt={path}", *extra)
        with pytest.raises(WeightsError, match="subprocess.Popen"):
            run(cfg)
        assert_nothing_ran(payload)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["evaluate", "visualize", "predict", "export", "localize"])
def test_commands_refuse_a_hostile_checkpoint(command, payload, tmp_path, nih_sample):
    """As a user runs them, on real data: ``chexnet-<command> ckpt=<hostile.ckpt>`` exits 2 naming
    the file and the foreign class, and the command it names never runs."""
    path = hostile_checkpoint(tmp_path / "hostile.ckpt", {}, popen(payload))
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (64, 64)).save(image)
    extra = {
        "predict": [f"image={image}", "backend=torch"],
        "export": ["format=onnx"],
        "visualize": ["label=Effusion"],
    }
    data = [f"data.root={nih_sample}"] if command in ("evaluate", "visualize", "localize") else []
    result = subprocess.run(
        [*console_script(command), f"ckpt={path}", *data, f"hydra.run.dir={tmp_path / 'run'}",
         *extra.get(command, [])],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**__import__("os").environ, "PYTHONPATH": str(payload), "WANDB_MODE": "offline"},
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    assert "subprocess.Popen" in output and str(path) in output, output
    assert_nothing_ran(payload)
