"""The README is executable: every command in its fenced code blocks runs in the suite.

A command is a line of a fenced block that starts with ``chexnet-``, ``.venv/bin/chexnet-``,
``python -m chexnet_pl.`` or ``make`` (a trailing ``\\`` continues it; ``# ...`` comments are
dropped). Each runs in a workspace laid out as the README's paths assume (``WORKSPACE`` below):
``/data/nih`` is a copy of the real NIH sample, ``outputs/train/2026-12-01/09-30-00/`` a trained
run's folder, and so on. A command that needs the network, a GPU or hours (``DRY_RUN``) runs as a
dry run: ``--cfg job`` (Hydra composes it) and ``--check`` (every setting through its owner).

To cover a new README command: write it with the placeholders below; nothing else is needed. A
new placeholder path gets one entry in ``workspace``; a new command that cannot run here gets
one entry in ``DRY_RUN`` saying why.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, arnoweng_checkpoint, random_checkpoint

from chexnet_pl.import_weights import import_arnoweng
from chexnet_pl.overrides import check_overrides

README = REPO / "README.md"
BIN = Path(sys.executable).parent
COMMAND = re.compile(r"^(?:\.venv/bin/)?(chexnet-[a-z-]+|python -m chexnet_pl\.\w+|make)\b")
NIH = "/data/nih"  # the README's download folder
RUN = "outputs/train/2026-12-01/09-30-00"  # the README's training run
EVALUATION = "outputs/evaluate/2026-12-01/10-00-00"  # the README's evaluation
# Programs (or make targets) that run as dry runs, and why.
DRY_RUN = {
    "chexnet-train": "downloads ImageNet weights and trains for hours (every recipe trains two "
    "batches in tests/test_shipped_configs.py)",
    "chexnet-download": "fetches NIH's 42 GB (tests/test_download.py serves a fake release)",
    "chexnet-serve": "serves until stopped (tests/test_serve.py runs the real server)",
}
MAKE_DRY_RUN = {
    "setup": "installs packages",
    "browser": "installs chromium with apt-get",
    "bench": "benchmarks for minutes",
    "format": "rewrites the sources",
    "clean": "deletes .venv",
}
MAKE_SKIPPED = {"test", "test-fast"}  # this suite itself


def readme_commands(text: str | None = None) -> list[str]:
    """Every command of the README's fenced blocks, in order, continuation lines joined."""
    text = README.read_text(encoding="utf-8") if text is None else text
    commands, inside, pending = [], False, ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        line = pending + line.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        command = line.split(" #", 1)[0].strip()
        if COMMAND.match(command):
            commands.append(command)
    return commands


def program(command: str) -> str:
    """``chexnet-<name>`` for ``chexnet-``/``python -m`` commands, ``make <target>`` for make."""
    words = shlex.split(command)
    if words[0] == "make":
        return f"make {words[1]}"
    if words[0] == "python":
        return "chexnet-" + words[2].removeprefix("chexnet_pl.").replace("_", "-")
    return words[0].removeprefix(".venv/bin/")


def test_the_readme_commands_are_found_and_pasteable():
    commands = readme_commands()
    programs = {program(c) for c in commands}
    assert {"chexnet-train", "chexnet-evaluate", "chexnet-predict", "chexnet-prepare",
            "make demo"} <= programs, programs  # fmt: skip
    for command in commands:
        assert not re.search(r"\[\w+=|<\w+>|\.\.\.|=…", command), f"not pasteable: {command}"
    sample = "```bash\nchexnet-train a=1 \\\n    b=2  # note\nls\n```\n`chexnet-x` inline\n"
    assert readme_commands(sample) == ["chexnet-train a=1 b=2"]


@pytest.mark.parametrize("command", readme_commands(), ids=lambda c: c[:70])
def test_every_readme_command_names_settings_that_exist(command):
    """Fast: a mistyped key in the README fails here, before any command runs."""
    name = program(command)
    if name.startswith("make") or name == "chexnet-import-weights":
        return
    args = [a for a in shlex.split(command) if "=" in a or a.startswith("-")]
    args = [a.replace(NIH, str(REPO)) for a in args if a != "-m"]
    assert check_overrides(name.removeprefix("chexnet-"), args) == []


# -- running them ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workspace(tmp_path_factory, nih_sample) -> Path:
    """A folder where the README's paths exist, built from the real NIH sample."""
    ws = tmp_path_factory.mktemp("readme")
    root = ws / "nih"  # /data/nih; a copy, as `prepare` writes into it
    shutil.copytree(nih_sample, root)
    best = random_checkpoint(ws / RUN / "checkpoints" / "best.ckpt", image_size=64,
                             root=str(root))  # fmt: skip
    shutil.copy(best, ws / RUN / "checkpoints" / "last.ckpt")
    for name, seed in (("new", 1), ("old", 2)):
        random_checkpoint(ws / "runs" / name / "checkpoints" / "best.ckpt", image_size=64,
                          seed=seed, root=str(root))  # fmt: skip
    images = sorted((root / "images").glob("*.png"))
    shutil.copy(images[0], ws / "xray.png")
    (ws / "xrays").mkdir()
    for image in images[1:4]:
        shutil.copy(image, ws / "xrays" / image.name)
    table = pd.read_csv(root / "Data_Entry_2017.csv")
    test = set((root / "test_list.txt").read_text().split())
    names = [c.removeprefix("prob_") for c in _probability_columns()]
    for file, rows, seed in (("preds.csv", test, 0), ("mine.csv", test, 0),
                             ("theirs.csv", test, 1),
                             ("preds_val.csv", set(table["Image Index"]) - test, 2)):  # fmt: skip
        chosen = sorted(rows)
        frame = pd.DataFrame(np.random.default_rng(seed).random((len(chosen), len(names))),
                             columns=_probability_columns())  # fmt: skip
        frame.insert(0, "Image Index", chosen)
        frame.to_csv(ws / file, index=False)
    _evaluation(ws, best)
    arnoweng_checkpoint(ws / "model.pth.tar")
    import_arnoweng(ws / "model.pth.tar", ws / "chexnet_arnoweng.ckpt")  # also a README command
    return ws


def _probability_columns() -> list[str]:
    from chexnet_pl.labels import class_names

    return [f"prob_{name}" for name in class_names()]


def _evaluation(ws: Path, checkpoint: Path) -> None:
    """``outputs/evaluate/.../`` with calibration.json and aucs.csv, as the README's
    ``chexnet-evaluate ... evaluation.calibrate=platt`` writes them."""
    result = run([str(BIN / "chexnet-evaluate"), f"ckpt={checkpoint}", "evaluation.calibrate=platt",
                  "evaluation.bootstrap_samples=0", f"hydra.run.dir={ws / EVALUATION}"], ws)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


def run(args: list[str], cwd: Path, timeout: int = 900, **env: str):
    environment = {**os.environ, "WANDB_MODE": "offline", **env}
    return subprocess.run(args, cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def as_run(command: str, ws: Path) -> list[str]:
    """The command's words, with the README's data folder replaced by the workspace's and the
    project's programs from this environment."""
    words = [w.replace(NIH, str(ws / "nih")) for w in shlex.split(command)]
    if words[0] == "python":
        return [sys.executable, *words[1:]]
    if words[0] == "make":
        return words
    return [str(BIN / program(command)), *words[1:]]


@pytest.mark.slow
@pytest.mark.parametrize("command", readme_commands(), ids=lambda c: c[:70])
def test_every_readme_command_runs(command, workspace, tmp_path):
    name = program(command)
    words = as_run(command, workspace)
    if name.startswith("make"):
        target = name.split()[1]
        if target in MAKE_SKIPPED:
            pytest.skip(f"make {target} runs this suite")
        make = ["make", "-C", str(REPO), *words[1:]]
        if target in MAKE_DRY_RUN:  # make -n: the recipe is valid, nothing is run
            result = run([make[0], "-n", *make[1:]], workspace)
        else:  # the demo: its own data, generated into a temporary cache. Two batches of one
            # epoch (trainer limits, not recipe values): its 3 epochs take minutes on 2 busy cores
            shorter = "trainer.max_epochs=1 +trainer.limit_train_batches=2"
            result = run([*make, f"ARGS={shorter} hydra.run.dir={tmp_path / 'run'}"], workspace,
                         CHEXNET_CACHE=str(tmp_path / "cache"))  # fmt: skip
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        return
    if "--help" in words or "--check" in words:  # they do no work: as written
        result = run(words, workspace)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        return
    if name in DRY_RUN:
        if "-m" not in words:  # Hydra's --cfg shows one job (not a sweep)
            shown = run([*words, "--cfg", "job"], workspace)
            assert shown.returncode == 0, shown.stderr[-3000:]
        checked = run([*words, "--check"], workspace)
        assert checked.returncode == 0, (checked.stdout + checked.stderr)[-3000:]
        assert "every setting can be used" in checked.stdout + checked.stderr
        return
    if name != "chexnet-import-weights":
        words.append(f"hydra.run.dir={tmp_path / 'run'}")
    result = run(words, workspace)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
