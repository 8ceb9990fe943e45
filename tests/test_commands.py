"""The commands as a user meets them: ``--help`` describes the command itself, ``--check`` judges
every setting without doing any work, and mistakes end in one line and exit status 2."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, compose_config
from omegaconf import OmegaConf

from chexnet_pl.command_help import command_help, yaml_settings
from chexnet_pl.command_runner import config_dir, run_command

COMMANDS = ["train", "evaluate", "predict", "visualize", "localize", "download", "prepare",
            "export", "serve"]  # fmt: skip
BIN = Path(sys.executable).parent


def help_text(command: str) -> str:
    doc = importlib.import_module(f"chexnet_pl.{command}").__doc__
    return command_help(command, doc, config_dir(), command)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_describes_the_command_with_examples_and_its_own_settings(command):
    text = help_text(command)
    assert text.startswith(f"chexnet-{command}: ")
    examples = [
        line for line in text.splitlines() if line.strip().startswith(f"chexnet-{command} ")
    ]
    assert 2 <= len(examples) <= 3, examples
    own, _ = yaml_settings(config_dir() / f"{command}.yaml")
    for setting in own:
        if setting.key == "task_name":
            continue
        assert f"  {setting.key}" in text, setting.key
        if setting.comment:
            assert setting.comment.split()[0] in text, setting
    if command != "train":  # train's groups belong to train
        assert "experiment=" not in text.split("\n\n", 2)[-1] and "trainer=" not in text


def test_train_help_lists_its_groups_and_sections():
    text = help_text("train")
    assert "experiment=alexnet|convnext|demo|densenet121|densenet169|densenet201" in text
    assert "trainer=auto|cpu|ddp|gpu  (default: auto)" in text
    for key in ("data.num_workers=auto", "model.optimizer.lr=1.0e-3", "evaluation.calibrate=none"):
        assert f"  {key}" in text


def _help_values(text: str) -> dict[str, str]:
    """``key=value`` of each settings line of a ``--help`` (the value ends where its comment's
    column begins: two spaces or more)."""
    values = {}
    for line in text.split("\nGroups (")[0].splitlines():  # not the choices of a group's file
        head = (
            line[2:].split("  ")[0] if line.startswith("  ") and not line.startswith("   ") else ""
        )
        key, equals, value = head.partition("=")
        if equals and " " not in key:
            values[key] = value
    return values


# Composed keys --help shows as a choice of file (logger=csv|...), or that are not settings.
NOT_LISTED = ("hydra", "paths", "task_name", "logger")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_every_default_of_the_composed_config(command):
    """Every setting Hydra composes for the command (its YAML and its groups' files), with the
    very default it composes to: a nested mapping whole or key by key, never a comment."""
    shown = _help_values(help_text(command))
    composed = OmegaConf.to_container(compose_config(command), resolve=False)
    missing, wrong = [], []

    def check(key: str, value) -> None:
        if key in shown:
            if yaml.safe_load(shown[key]) != value:
                wrong.append(f"{key}={shown[key]} (composed: {value!r})")
        elif isinstance(value, dict) and value:
            for child, inner in value.items():
                if not (child.startswith("_") and child.endswith("_")):
                    check(f"{key}.{child}", inner)
        else:
            missing.append(f"{key}={value!r}")

    for key, value in composed.items():
        if key not in NOT_LISTED:
            check(key, value)
    assert not missing and not wrong, (missing, wrong)


def test_train_help_shows_the_trainer_and_every_recipe_as_composed():
    text = help_text("train")
    shown = _help_values(text)
    for key in ("trainer.max_epochs", "trainer.precision", "trainer.accelerator",
                "trainer.devices", "callbacks.visualization.n_images"):  # fmt: skip
        assert key in shown, key
    table = text.split("Recipes (experiment=<recipe>")[1].split("\n\n")[0].splitlines()[1:]
    assert table[0].split() == ["recipe", "backbone", "epochs", "batch", "optimizer", "lr", "image"]
    rows = {line.split()[0]: line.split()[1:] for line in table[1:]}
    recipes = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))
    assert sorted(rows) == recipes
    for recipe in recipes:
        cfg = compose_config("train", None, f"experiment={recipe}")
        backbone, epochs, batch, optimizer, lr, size, _px = rows[recipe]
        assert backbone == cfg.model.backbone and int(epochs) == cfg.trainer.max_epochs, recipe
        assert int(batch) == cfg.data.batch_size and optimizer == cfg.model.optimizer.name, recipe
        assert float(lr) == cfg.model.optimizer.lr and int(size) == cfg.data.image_size, recipe


def test_help_renders_nested_mappings_and_group_defaults_right():
    """evaluate's expert_map (keys with spaces) whole; a group's default without its comment."""
    evaluate = _help_values(help_text("evaluate"))
    assert yaml.safe_load(evaluate["expert_map"]) == {
        "Pneumothorax": ["Pneumothorax"], "Nodule or mass": ["Nodule", "Mass"],
        "Airspace opacity": ["Consolidation", "Pneumonia", "Infiltration", "Edema"],
        "Fracture": [],
    }  # fmt: skip
    for command in ("predict", "serve"):
        text = help_text(command)
        assert "# max_pixels" not in text and "(default: default" not in text
        assert _help_values(text)["max_pixels"] == "40000000"


def test_the_help_of_a_comment_is_its_yaml_comment():
    """A key's comment on its line, or the comment lines just above it."""
    settings = {s.key: s for s in yaml_settings(config_dir() / "data" / "nih.yaml")[0]}
    assert settings["view_position"].comment.startswith("all | PA | AP")
    assert settings["cache"].comment.startswith("Pre-resized image cache from `chexnet-prepare")
    assert settings["split.method"].value == "official"


def test_help_and_check_are_answered_before_hydra(capsys, nih_sample, monkeypatch):
    from chexnet_pl import predict, train

    TRAIN = {"check": train.check_config, "doc": train.__doc__}  # what chexnet-train passes

    def hydra_main():
        raise AssertionError("Hydra's main ran")

    with pytest.raises(SystemExit) as exit_info:
        run_command(
            "predict", hydra_main, ["--help"], check=predict.check_config, doc=predict.__doc__
        )
    assert exit_info.value.code == 0 and "chexnet-predict: " in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        run_command("train", hydra_main, ["experiment=densenet121", f"data.root={nih_sample}",
                                          "--check"], **TRAIN)  # fmt: skip
    assert exit_info.value.code == 0
    with pytest.raises(SystemExit) as exit_info:
        run_command("train", hydra_main, ["data.image_sise=64"], **TRAIN)
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        run_command("train", hydra_main, ["data.root=/nonexistent", "--check"], **TRAIN)
    assert exit_info.value.code == 2


# -- the installed commands, as processes ------------------------------------------------------
def run(*args: str, cwd: Path = REPO, timeout: int = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_help_of_every_command_imports_no_torch():
    """``--help`` reads text only: no torch, no Lightning (seconds saved on every call)."""
    for command in [*COMMANDS, "import_weights"]:
        probe = (
            "import sys; sys.argv = ['x', '--help']\n"
            f"from chexnet_pl.{command} import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code in (0, None)\n"
            "heavy = [m for m in ('torch', 'pytorch_lightning', 'pandas') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n"
        )
        result = run(sys.executable, "-c", probe)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "HEAVY []" in result.stdout, (command, result.stdout[-300:])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["chexnet-predict", "imag=x.png"], "imag is not a setting of chexnet-predict; did you "
                                            "mean image="),
        (["chexnet-train", "data.image_sise=64"], "did you mean data.image_size=?"),
        (["chexnet-train", "+data.image_sise=64", "data.root=NIH"], "data.image_sise is not a "
                                                                   "setting; did you mean "
                                                                   "data.image_size?"),
        (["chexnet-train", "data.root=/nonexistent"], "data.root=/nonexistent is not a folder"),
        (["chexnet-train", "experiment=densenet121"], "required setting not given: data.root"),
        (["chexnet-predict", "image=x.png"], "required setting not given: ckpt"),
        (["chexnet-train", "experiment=demo", "data.root=NIH", "evaluation.tta=hflp"],
         "evaluation.tta='hflp' is not a valid setting"),
    ],
)  # fmt: skip
def test_a_mistake_is_one_line_and_exit_status_2(args, message, nih_sample, tmp_path):
    args = [str(BIN / args[0]), *(a.replace("NIH", str(nih_sample)) for a in args[1:])]
    result = run(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    assert message in output, output[-2000:]
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and "Traceback" not in output, output[-2000:]
    # stopped before any work: the run folder Hydra made is gone (the newest is a real run)
    assert not (tmp_path / "run").exists(), list((tmp_path / "run").rglob("*"))


@pytest.mark.slow
def test_gpu_smoke_runs_the_shipped_defaults_on_the_cpu(tmp_path):
    """``benchmarks/gpu.py --smoke --device cpu``: what a lent GPU runs first, here with
    ``trainer=cpu``: train one epoch from a 64-image cache, test evaluation, a predict."""
    result = run(sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--smoke", "--device", "cpu",
                 "--out", str(tmp_path), timeout=900)  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    for stage in ("release + prepare", "train 1 epoch + test evaluation", "predict"):
        assert stage in result.stdout
    assert "4 images →" in result.stdout and (tmp_path / "smoke" / "train" / "aucs.csv").is_file()


# -- mistakes answered before torch is imported -------------------------------------------------
def _early_cases(tmp_path: Path, nih_sample: Path) -> dict[str, tuple[list[str], str]]:
    """A run folder with a checkpoint (only its name is read: an empty file), a CSV for an
    image, and each mistake with what must be said."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.ckpt").write_bytes(b"")
    table = tmp_path / "labels.csv"
    table.write_text("Image Index,Finding Labels\nx.png,No Finding\n")
    png = next((nih_sample / "images").glob("*.png"))
    missing = tmp_path / "none.ckpt"
    return {
        "wrong data.root": (["train", "data.root=/nonexistent"],
                            "data.root=/nonexistent is not a folder; give the NIH download folder"),
        "missing ckpt (evaluate)": ([ "evaluate", f"ckpt={missing}"],
                                    f"ckpt={missing} is not a file (no such file)"),
        "missing ckpt (predict)": (["predict", f"ckpt={missing}", f"image={png}"],
                                   f"ckpt={missing} is not a file (no such file)"),
        "ckpt a run folder": (["evaluate", f"ckpt={run}"],
                              f"ckpt={run} is a folder, not a file; give the run's best "
                              f"checkpoint: ckpt={run / 'checkpoints' / 'best.ckpt'}"),
        "image a CSV": (["predict", f"ckpt={run / 'checkpoints' / 'best.ckpt'}", f"image={table}"],
                        f"image={table}: not a PNG, JPEG or DICOM image (it starts with "
                        "b'Image In'); send a chest X-ray as PNG, JPEG or DICOM"),
    }  # fmt: skip


EARLY_CASES = ["wrong data.root", "missing ckpt (evaluate)", "missing ckpt (predict)",
               "ckpt a run folder", "image a CSV"]  # fmt: skip


@pytest.mark.parametrize("case", EARLY_CASES)
def test_a_mistake_in_a_file_or_folder_is_found_before_the_command_runs(case, tmp_path, nih_sample):
    from chexnet_pl.early import early_problems

    (command, *args), message = _early_cases(tmp_path, nih_sample)[case]
    found = early_problems(command, args)
    assert len(found) == 1 and found[0].startswith(message), found


def test_predict_says_of_a_non_image_what_the_service_answers(tmp_path):
    from chexnet_pl.early import image_problem
    from chexnet_pl.serving.decode import UploadError, decode_image

    table = tmp_path / "labels.csv"
    table.write_text("Image Index,Finding Labels\nx.png,No Finding\n")
    with pytest.raises(UploadError) as refused:
        decode_image(table.read_bytes(), max_pixels=10**6)
    assert refused.value.status == 415
    assert image_problem("image", str(table)) == f"image={table}: {refused.value}"


@pytest.mark.slow  # launches the commands
@pytest.mark.parametrize("case", EARLY_CASES)
def test_a_mistake_is_answered_once_before_torch_is_imported(case, tmp_path, nih_sample):
    (command, *args), message = _early_cases(tmp_path, nih_sample)[case]
    result = run(sys.executable, "-X", "importtime", "-m", f"chexnet_pl.{command}", *args,
                 f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path)  # fmt: skip
    output = result.stdout + result.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in output.splitlines()
                if line.startswith("import time:")}  # fmt: skip
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert result.returncode == 2, output[-2000:]
    assert len(errors) == 1 and message in errors[0], errors or output[-2000:]
    assert output.count(message) == 1
    assert imported and "torch" not in imported and "pytorch_lightning" not in imported
    assert not (tmp_path / "out").exists()  # stopped before Hydra made a run folder
