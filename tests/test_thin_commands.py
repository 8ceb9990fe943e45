"""The commands are thin shells over the library (issue 30): a command module holds its settings
(a frozen ``*Settings`` dataclass and ``check_config``), a few lines that turn its config into a
library call, ``hydra_main`` and ``main`` — and nothing a Python user would need: a training run
is ``chexnet_pl.training.run.run_training``, a predicted folder
``serving.predict_images.predict_images``, an explored finding
``visualization.explore.explore_finding``, a localisation ``localization.scoring.localize_checkpoint``.
Nothing in the package imports a command module, and no command imports torch, Lightning or numpy.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from conftest import compose_config, compose_train_config, tiny_overrides
from test_layers import COMMANDS, PACKAGE, imports, layer

import chexnet_pl
from chexnet_pl.config_defaults import config_dir
from chexnet_pl.errors import ConfigError

# The most statements one function of a command may hold, and a command module all together
# (its settings dataclass aside). evaluate.py is the largest shell today: 18 + 19 + 2 + 1 = 40
# (its check_config judges settings across sections; its run picks the checkpoint or the
# predictions pipeline). The training run that train.py held had over 60 in one function and
# about 90 in the module: either bound stops it.
MAX_FUNCTION_STATEMENTS = 20
MAX_MODULE_STATEMENTS = 45
# Libraries whose use is the library's work, not a shell's (pandas only for type hints).
HEAVY = ("torch", "torchvision", "pytorch_lightning", "lightning", "numpy", "pandas")


def statements(node: ast.AST) -> int:
    """The statements inside ``node`` (a function), nested ones included, its docstring not."""
    body = getattr(node, "body", [])
    docstring = (
        1
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
        else 0
    )
    return sum(isinstance(n, ast.stmt) for n in ast.walk(node)) - 1 - docstring


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Line numbers of the imports under ``if TYPE_CHECKING:`` (hints, never run)."""
    lines = set()
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            lines |= {
                n.lineno for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom)
            }
    return lines


def shell_problems(source: str, name: str) -> list[str]:
    """Why the command module ``name`` with ``source`` is more than a shell (empty: it is one)."""
    tree = ast.parse(source)
    problems, total = [], 0
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            count = statements(node)
            total += count
            if count > MAX_FUNCTION_STATEMENTS:
                problems.append(f"{name}.{node.name}: {count} statements (at most "
                                f"{MAX_FUNCTION_STATEMENTS}): move the work into the library")  # fmt: skip
        elif isinstance(node, ast.ClassDef):
            decorators = [ast.unparse(d) for d in node.decorator_list]
            if not node.name.endswith("Settings") or not any("dataclass" in d for d in decorators):
                problems.append(f"{name}.{node.name}: a command holds only its *Settings "
                                "dataclass; other classes belong to the library")  # fmt: skip
    if total > MAX_MODULE_STATEMENTS:
        problems.append(f"{name}: {total} statements in its functions (at most "
                        f"{MAX_MODULE_STATEMENTS})")  # fmt: skip
    hints = _type_checking_only(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules = [node.module or ""]
        else:
            continue
        for module in modules:
            if module.split(".")[0] in HEAVY and node.lineno not in hints:
                problems.append(f"{name} imports {module} (line {node.lineno})")
    return problems


def test_every_command_module_is_a_shell():
    problems = []
    for command in sorted(COMMANDS):
        path = PACKAGE / f"{command}.py"
        problems += shell_problems(path.read_text(), command)
    assert not problems, "\n".join(problems)


def test_the_shell_check_sees_a_command_that_holds_library_work():
    """The check is live: the training run back in a command is refused however it is cut."""
    run = "\n".join(f"    step_{i} = {i}" for i in range(MAX_FUNCTION_STATEMENTS + 1))
    assert shell_problems(f"def train(cfg):\n{run}\n", "train") == [
        f"train.train: {MAX_FUNCTION_STATEMENTS + 1} statements (at most "
        f"{MAX_FUNCTION_STATEMENTS}): move the work into the library"
    ]
    helpers = "".join(
        f"def _part_{j}(cfg):\n" + "".join(f"    x_{i} = {i}\n" for i in range(10))
        for j in range(5)
    )
    assert shell_problems(helpers, "train") == [
        f"train: 50 statements in its functions (at most {MAX_MODULE_STATEMENTS})"
    ]
    lightning = "def train(cfg):\n    import pytorch_lightning as pl\n    return pl.Trainer()\n"
    assert shell_problems(lightning, "train") == ["train imports pytorch_lightning (line 2)"]
    hinted = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pandas as pd\n"
    assert shell_problems(hinted, "localize") == []
    runner = "class Runner:\n    pass\n"
    assert shell_problems(runner, "evaluate")[0].startswith("evaluate.Runner: a command holds")
    shell = '"""doc"""\ndef main():\n    """The command."""\n    run_command("x")\n'
    assert shell_problems(shell, "x") == []


def test_nothing_in_the_package_imports_a_command_module():
    """The API and the library reach the work in the library; a command module is an entry
    point only (``python -m chexnet_pl.<name>``, ``chexnet-<name>``)."""
    commands = {f"chexnet_pl.{name}" for name in COMMANDS}
    assert all(layer(command) == 4 for command in commands)
    importers = sorted(
        (module, target)
        for module, targets in imports().items()
        for target in targets & commands
        if module != target
    )
    assert not importers


def test_the_training_run_is_the_librarys_and_the_shells_check_first(
    tmp_path, synthetic_root, monkeypatch
):
    """``run_training`` (``training/run.py``) takes the config as judged and imports nothing of
    the commands' machinery; the command's ``train`` and the API's ``chexnet_pl.train`` run the
    pre-flight check, then hand the same config to it."""
    import importlib

    import chexnet_pl.training.run as library

    assert "chexnet_pl.settings" not in imports()["chexnet_pl.training.run"]
    assert "check_train_config" not in inspect.getsource(library.run_training)
    command = importlib.import_module("chexnet_pl.train")
    given = []
    monkeypatch.setattr(library, "run_training", lambda cfg: given.append(cfg) or ({}, {}))

    bad = compose_train_config(tmp_path / "bad", [*tiny_overrides(synthetic_root),
                                                  "evaluation.tta=hflp"])  # fmt: skip
    with pytest.raises(ConfigError, match="evaluation.tta='hflp'"):
        command.train(bad)
    with pytest.raises(ConfigError, match="evaluation.tta='hflp'"):
        chexnet_pl.train([*tiny_overrides(synthetic_root), "evaluation.tta=hflp",
                          f"hydra.run.dir={tmp_path / 'api_bad'}"])  # fmt: skip
    assert given == []  # refused before the library was called

    good = compose_train_config(tmp_path / "good", tiny_overrides(synthetic_root))
    assert command.train(good) == ({}, {}) and given == [good]
    run = chexnet_pl.train([*tiny_overrides(synthetic_root), f"hydra.run.dir={tmp_path / 'api'}"])
    assert run == tmp_path / "api" and len(given) == 2
    assert given[1].paths.output_dir == str(run) and "hydra" not in given[1]


def test_the_api_judges_every_setting_before_any_work(tmp_path, synthetic_root):
    """A value no component takes (not a mistyped key: the pre-flight check's, not the command
    line's) stops ``chexnet_pl.train`` with a ConfigError before anything is written."""
    run = tmp_path / "run"
    overrides = [*tiny_overrides(synthetic_root), "evaluation.tta=hflp", "model.optimizer.lr=-1",
                 f"hydra.run.dir={run}"]  # fmt: skip
    with pytest.raises(ConfigError) as refused:
        chexnet_pl.train(overrides)
    message = str(refused.value)  # every problem at once
    assert "evaluation.tta='hflp'" in message and "model.optimizer.lr=-1" in message, message
    assert not run.exists() or not any(run.iterdir())


@pytest.mark.parametrize(
    ("function", "config"),
    [
        ("chexnet_pl.serving.predict_images:predict_images", "predict.yaml"),
        ("chexnet_pl.visualization.explore:explore_finding", "visualize.yaml"),
    ],
)
def test_the_library_functions_defaults_are_the_shipped_ones(function, config):
    """The library's keyword defaults (a Python user's) equal the command's YAML defaults
    (``data``, a section, aside: the library's None keeps the checkpoint's data settings)."""
    import importlib

    from omegaconf import OmegaConf

    module, name = function.split(":")
    signature = inspect.signature(getattr(importlib.import_module(module), name))
    shipped = OmegaConf.to_container(OmegaConf.load(Path(config_dir()) / config))
    compared = {
        key: (parameter.default, shipped[key])
        for key, parameter in signature.parameters.items()
        if parameter.default is not inspect.Parameter.empty
        and key in shipped
        and not isinstance(shipped[key], dict)
    }
    assert len(compared) >= 5, compared
    assert all(ours == theirs for ours, theirs in compared.values()), compared


@pytest.mark.parametrize(
    ("mode", "override_dirname", "group", "name"),
    [
        ("MULTIRUN", "model.optimizer.lr=0.1", "sweep-7", "model.optimizer.lr=0.1"),
        ("MULTIRUN", "", "sweep-7", "job3"),
        ("RUN", "model.optimizer.lr=0.1", None, None),
    ],
)
def test_a_sweeps_wandb_runs_share_a_group_named_by_its_folder(
    tmp_path, mode, override_dirname, group, name
):
    """In a multirun, each run's W&B logger gets the sweep folder's name as its group and its
    overrides (else ``job<n>``) as its name; a single run's are left as configured."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    from chexnet_pl.training.run import _name_sweep_runs

    cfg = compose_config("train", tmp_path / "run", "logger=wandb", hydra_config=True)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode[mode]
        cfg.hydra.sweep.dir = str(tmp_path / "sweep-7")
        cfg.hydra.job.override_dirname = override_dirname
        cfg.hydra.job.num = 3
    previous = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(cfg)
    try:
        named = _name_sweep_runs(cfg.logger)
    finally:
        HydraConfig.instance().cfg = previous
    assert (named.wandb.get("group"), named.wandb.get("name")) == (group, name)
    assert named.csv == cfg.logger.csv and cfg.logger.wandb.get("group") is None  # a copy
