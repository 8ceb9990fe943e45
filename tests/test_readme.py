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
# The README's other data folders → the workspace's (longest first: one may hold another's name).
PLACES = {
    "/data/mimiciv/hosp/patients.csv.gz": "mimic_patients.csv.gz",
    "/data/mimic-cxr-jpg/2.0.0": "mimic",
    "/data/chexpert": "chexpert",
    NIH: "nih",
}
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


def make_targets() -> set[str]:
    """The targets the Makefile defines (``name:`` at the start of a line)."""
    return set(re.findall(r"^([A-Za-z][\w-]*):", (REPO / "Makefile").read_text(), re.MULTILINE))


@pytest.mark.parametrize("command", readme_commands(), ids=lambda c: c[:70])
def test_every_readme_command_names_settings_that_exist(command, monkeypatch):
    """Fast: a mistyped key, make target or argument in the README fails here, before any
    command runs (``test_every_readme_command_runs`` then runs each)."""
    name = program(command)
    words = shlex.split(command)
    if words[0] == "make":  # its target exists, and each VAR=value is a variable the recipes read
        assert words[1] in make_targets(), f"the Makefile has no target {words[1]!r}"
        for variable in (w.split("=", 1)[0] for w in words[2:]):
            assert f"$({variable})" in (REPO / "Makefile").read_text(), variable
        return
    if name == "chexnet-import-weights":  # no settings: two paths, parsed here by its own parser
        import chexnet_pl.import_weights as import_weights

        given = []
        monkeypatch.setattr(import_weights, "import_arnoweng", lambda *a: given.append(a))
        assert import_weights.main(words[1:]) == 0
        assert given == [tuple(words[1:])]
        return
    args = [a for a in words if "=" in a or a.startswith("-")]
    args = [a.replace(NIH, str(REPO)) for a in args if a != "-m"]
    assert check_overrides(name.removeprefix("chexnet-"), args) == []


# -- running them ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workspace(tmp_path_factory, nih_sample, chexpert_train_csv) -> Path:
    """A folder where the README's paths exist, built from the real NIH sample (and CheXpert's
    real train.csv, a miniature MIMIC-CXR-JPG, Google's table's format for the sample)."""
    from xray_datasets import make_chexpert_root, make_mimic_root

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
    _other_datasets(ws, make_chexpert_root(ws / "chexpert", chexpert_train_csv),
                    make_mimic_root(ws / "mimic"))  # fmt: skip
    _expert_labels(ws / "google2019_nih-chest-xray-labels.csv.gz", root)
    arnoweng_checkpoint(ws / "model.pth.tar")
    import_arnoweng(ws / "model.pth.tar", ws / "chexnet_arnoweng.ckpt")  # also a README command
    return ws


def _other_datasets(ws: Path, chexpert: Path, mimic: Path) -> None:
    """CheXpert's test split scored by a random predictions file (``chexpert_preds.csv``), and
    MIMIC-IV's patients table for the MIMIC subjects."""
    from chexnet_pl.data.chexpert import CheXpertDataModule
    from chexnet_pl.shipped import shipped_data

    datamodule = CheXpertDataModule(
        **shipped_data("chexnet_pl.data.chexpert.CheXpertDataModule", root=str(chexpert))
    )
    images = datamodule.read_labels().table
    test = images.loc[images["split"] == "test", "Image Index"].tolist()
    scores = np.random.default_rng(3).random((len(test), len(datamodule.pathologies)))
    frame = pd.DataFrame(scores, columns=[f"prob_{n}" for n in datamodule.pathologies])
    frame.insert(0, "Image Index", test)
    frame.to_csv(ws / "chexpert_preds.csv", index=False)
    metadata = pd.read_csv(mimic / "mimic-cxr-2.0.0-metadata.csv.gz")
    subjects = sorted(metadata["subject_id"].unique())
    pd.DataFrame({"subject_id": subjects, "gender": ["F", "M"] * (len(subjects) // 2) + ["F"] *
                  (len(subjects) % 2), "anchor_age": 60, "anchor_year": 2150}).to_csv(
        ws / "mimic_patients.csv.gz", index=False)  # fmt: skip


def _expert_labels(path: Path, root: Path) -> None:
    """A table in the format of Google's radiologist labels (its real header, read from
    ../shared/data) for the sample's images, with their NIH findings as the experts' answers."""
    from conftest import SHARED_DATA

    real = pd.read_csv(SHARED_DATA / "nih-expert" / "google2019_nih-chest-xray-labels.csv.gz",
                       nrows=1)  # fmt: skip
    table = pd.read_csv(root / "Data_Entry_2017.csv")
    test = set((root / "test_list.txt").read_text().split())
    found = table["Finding Labels"].str
    rows = pd.DataFrame({column: table[column] for column in real.columns if column in table})
    yes = {"Pneumothorax": found.contains("Pneumothorax"),
           "Nodule or mass": found.contains("Nodule|Mass"),
           "Airspace opacity": found.contains("Consolidation|Pneumonia|Infiltration|Edema"),
           "Fracture": pd.Series(False, index=table.index)}  # fmt: skip
    for finding, positive in yes.items():
        rows[finding] = np.where(positive, "YES", "NO")
    rows["Set Id"] = np.where(table["Image Index"].isin(test), "test", "val")
    rows.reindex(columns=real.columns).to_csv(path, index=False)


def _probability_columns() -> list[str]:
    from chexnet_pl.data.nih_table import class_names

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
    words = shlex.split(command)
    for place, folder in PLACES.items():
        words = [w.replace(place, str(ws / folder)) for w in words]
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
