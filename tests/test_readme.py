"""The README and the documentation site are executable: every command in their fenced blocks runs
in the suite, every Python block runs, and each list of a command's output files is what a real
run of that command writes.

A command is a line of a fenced block that starts with ``chexnet-``, ``.venv/bin/chexnet-``,
``python -m chexnet_pl.`` or ``make``, optionally after environment settings
(``WANDB_MODE=offline chexnet-train ...``; a trailing ``\\`` continues it; ``# ...`` comments are
dropped). Each runs in a workspace laid out as the pages' paths assume (``WORKSPACE`` below):
``/data/nih`` is a copy of the real NIH sample, ``outputs/train/2026-12-01/09-30-00/`` a trained
run's folder, and so on. A command that needs the network, a GPU or hours (``DRY_RUN``) runs as a
dry run: ``--cfg job`` (Hydra composes it) and ``--check`` (every setting through its owner). Any
other line of a shell block (``bash``, ``sh``) must be listed in ``NOT_RUN`` with the reason.
A ``python`` block runs as a script in the workspace; one that uses a name ``chexnet_pl`` does
not have yet is skipped, naming it.

A list of output files follows an ``<!-- outputs`` comment that names, one a line, the commands
that write them; the list is the next table (its first column's ``code`` names) or fenced block
(each line's names before ``#``). A name whose description starts with "with " is written only
with some setting, so it may be missing from the commands' runs; every other name must be
written, and every file written must be listed. ``<...>`` and ``NNN`` stand for any name or
number; a name ending in ``/`` is a folder and covers what is in it.

To cover a new command: write it with the placeholders below; nothing else is needed. A new
placeholder path gets one entry in ``workspace``; a new command that cannot run here gets
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

from chexnet_pl.models.arnoweng import import_arnoweng
from chexnet_pl.overrides import check_overrides

README = REPO / "README.md"
# The README first, then the site's pages (mkdocs.yml's docs_dir).
DOCUMENTS = [README, *sorted((REPO / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
ENVIRONMENT = r"(?:[A-Z][A-Z0-9_]*=\S+ )*"  # VAR=value settings before a command
COMMAND = re.compile(
    rf"^{ENVIRONMENT}(?:\.venv/bin/)?(chexnet-[a-z-]+|python -m chexnet_pl\.\w+|make)\b"
)
SHELL = {"bash", "sh", "shell"}  # fenced blocks whose every line is a command, run or not
# Lines of shell blocks that are not the project's commands, and why they are not run.
NOT_RUN = {
    r"wandb sync ": "uploads an offline run to W&B: needs the network and an account",
}
NIH = "/data/nih"  # the pages' download folder
# The README's other data folders → the workspace's (longest first: one may hold another's name).
PLACES = {
    "/data/mimiciv/hosp/patients.csv.gz": "mimic_patients.csv.gz",
    "/data/vinbigdata": "vinbigdata",
    "/data/padchest": "padchest",
    "/data/rsna": "rsna",
    "/data/siim": "siim",
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
    "docs": "builds the site (tests/test_docs.py runs the same strict build)",
    "docs-serve": "serves the site until stopped",
    "lint": "lints the sources (CI's own step)",
    "browser": "installs chromium with apt-get",
    "bench": "benchmarks for minutes",
    "format": "rewrites the sources",
    "clean": "deletes .venv",
}
MAKE_SKIPPED = {"test", "test-fast"}  # this suite itself


def fenced_blocks(text: str) -> list[tuple[str, list[str]]]:
    """Each fenced block of a Markdown text: (its language, its lines)."""
    blocks, language, body = [], None, []
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if language is None:
                language, body = line.strip()[3:].strip().lower(), []
            else:
                blocks.append((language, body))
                language = None
            continue
        if language is not None:
            body.append(line)
    return blocks


def block_lines(lines: list[str]) -> list[str]:
    """A block's lines with continuation lines joined and ``# ...`` comments dropped."""
    joined, pending = [], ""
    for line in lines:
        line = pending + line.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            joined.append(line)
    return joined


def readme_commands(text: str | None = None) -> list[str]:
    """Every command of a page's fenced blocks (the README's by default), in order, continuation
    lines joined."""
    text = README.read_text(encoding="utf-8") if text is None else text
    return [line for language, lines in fenced_blocks(text) if language != "python"
            for line in block_lines(lines) if COMMAND.match(line)]  # fmt: skip


def page_name(path: Path) -> str:
    return str(path.relative_to(REPO))


def documented_commands() -> list[tuple[str, str]]:
    """(page, command) for every command of the README and the site, each command once (the
    first page that shows it)."""
    seen, found = set(), []
    for path in DOCUMENTS:
        for command in readme_commands(path.read_text(encoding="utf-8")):
            if command not in seen:
                seen.add(command)
                found.append((page_name(path), command))
    return found


# A block that only includes a file (pymdownx.snippets: ``--8<-- "docs/tutorial.py"``) shows that
# file, which runs in its own test (tests/test_api.py runs the tutorial).
SNIPPET = re.compile(r'^--8<-- "[^"]+"$')


def python_blocks() -> list[tuple[str, str]]:
    """(page, code) of every ``python`` block of the README and the site."""
    return [(page_name(path), "\n".join(lines)) for path in DOCUMENTS
            for language, lines in fenced_blocks(path.read_text(encoding="utf-8"))
            if language == "python"
            and not (len(lines) == 1 and SNIPPET.match(lines[0].strip()))]  # fmt: skip


def environment_and_words(command: str) -> tuple[dict[str, str], list[str]]:
    """The ``VAR=value`` settings before a command, and its words."""
    words = shlex.split(command)
    env = {}
    while words and re.fullmatch(r"[A-Z][A-Z0-9_]*=\S*", words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    return env, words


def program(command: str) -> str:
    """``chexnet-<name>`` for ``chexnet-``/``python -m`` commands, ``make <target>`` for make."""
    words = environment_and_words(command)[1]
    if words[0] == "make":
        return f"make {words[1]}"
    if words[0] == "python":
        return "chexnet-" + words[2].removeprefix("chexnet_pl.").replace("_", "-")
    return words[0].removeprefix(".venv/bin/")


def test_the_documented_commands_are_found_and_pasteable():
    commands = [command for _, command in documented_commands()]
    programs = {program(c) for c in commands}
    assert {"chexnet-train", "chexnet-evaluate", "chexnet-predict", "chexnet-prepare",
            "chexnet-visualize", "chexnet-localize", "chexnet-export", "chexnet-serve",
            "chexnet-download", "chexnet-import-weights", "make demo"} <= programs, programs  # fmt: skip
    for command in commands:
        assert not re.search(r"\[\w+=|<\w+>|\.\.\.|=…", command), f"not pasteable: {command}"
    sample = "```bash\nchexnet-train a=1 \\\n    b=2  # note\nls\n```\n`chexnet-x` inline\n"
    assert readme_commands(sample) == ["chexnet-train a=1 b=2"]
    assert readme_commands("```bash\nWANDB_MODE=offline chexnet-train a=1\n```\n") == [
        "WANDB_MODE=offline chexnet-train a=1"
    ]


def test_the_readme_is_short_and_starts_with_the_quickstart():
    """A newcomer finds train, evaluate and a heat map (predict) in the README's first 80 lines."""
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; the site holds the rest"
    first = {program(c) for c in readme_commands("\n".join(lines[:80]))}
    assert {"chexnet-train", "chexnet-evaluate", "chexnet-predict", "make demo",
            "make test"} <= first, first  # fmt: skip


def test_every_shell_line_is_run_or_says_why_not():
    """A line of a shell block that is not a project command must be listed in NOT_RUN."""
    unexplained = []
    for path in DOCUMENTS:
        for language, lines in fenced_blocks(path.read_text(encoding="utf-8")):
            if language in SHELL:
                unexplained += [f"{page_name(path)}: {line}" for line in block_lines(lines)
                                if not COMMAND.match(line)
                                and not any(re.match(p, line) for p in NOT_RUN)]  # fmt: skip
    assert unexplained == [], "run these, or say in NOT_RUN why not"


def test_every_python_block_compiles():
    blocks = python_blocks()
    assert blocks, "the README and the site show Python"
    for page, code in blocks:
        compile(code, page, "exec")


def command_id(case: tuple[str, str]) -> str:
    page, command = case
    return f"{Path(page).name}: {command[:70]}"


def make_targets() -> set[str]:
    """The targets the Makefile defines (``name:`` at the start of a line)."""
    return set(re.findall(r"^([A-Za-z][\w-]*):", (REPO / "Makefile").read_text(), re.MULTILINE))


@pytest.mark.parametrize("case", documented_commands(), ids=command_id)
def test_every_documented_command_names_settings_that_exist(case, monkeypatch):
    """Fast: a mistyped key, make target or argument in the README or a page fails here, before
    any command runs (``test_every_documented_command_runs`` then runs each)."""
    _, command = case
    name = program(command)
    words = environment_and_words(command)[1]
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
    _releases(ws)
    _expert_labels(ws / "google2019_nih-chest-xray-labels.csv.gz", root)
    arnoweng_checkpoint(ws / "model.pth.tar")
    import_arnoweng(ws / "model.pth.tar", ws / "chexnet_arnoweng.ckpt")  # also a README command
    return ws


def _other_datasets(ws: Path, chexpert: Path, mimic: Path) -> None:
    """CheXpert's test split scored by a random predictions file (``chexpert_preds.csv``), and
    MIMIC-IV's patients table for the MIMIC subjects."""
    from chexnet_pl.config_defaults import shipped_data
    from chexnet_pl.data.chexpert import CheXpertDataModule

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


def _releases(ws: Path) -> None:
    """PadChest, VinDr-CXR, RSNA and SIIM downloads of a few dozen real rows each (their real
    tables' first rows, generated images) at ``/data/padchest``, ``/data/vinbigdata``,
    ``/data/rsna``, ``/data/siim``; the DICOMs at the releases' sizes, so that their boxes and
    masks fit (localize)."""
    from dicom_datasets import make_rsna_root, make_siim_root, make_vindr_full_size_root
    from test_padchest import PADCHEST_CSV, make_padchest_root
    from test_rsna_pneumonia import LABELS_ZIP
    from test_siim_pneumothorax import RLE_CSV
    from test_vindr_cxr import VINDR_CSV

    if all(p.is_file() for p in (PADCHEST_CSV, VINDR_CSV, LABELS_ZIP, RLE_CSV)):
        make_padchest_root(
            ws / "padchest", pd.read_csv(PADCHEST_CSV, dtype=str, nrows=120), rows=120
        )
        make_vindr_full_size_root(ws / "vinbigdata", VINDR_CSV, 12)
        make_rsna_root(ws / "rsna", LABELS_ZIP, images=20, size=1024)
        make_siim_root(ws / "siim", RLE_CSV, images=20, size=1024)


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


def in_workspace(text: str, ws: Path) -> str:
    """A page's text with its data folders replaced by the workspace's."""
    for place, folder in PLACES.items():
        text = text.replace(place, str(ws / folder))
    return text


def as_run(command: str, ws: Path) -> tuple[dict[str, str], list[str]]:
    """The command's environment settings and words, with the pages' data folders replaced by
    the workspace's and the project's programs from this environment."""
    env, words = environment_and_words(command)
    words = [in_workspace(w, ws) for w in words]
    if words[0] == "python":
        return env, [sys.executable, *words[1:]]
    if words[0] == "make":
        return env, words
    return env, [str(BIN / program(command)), *words[1:]]


@pytest.mark.slow
@pytest.mark.parametrize("case", documented_commands(), ids=command_id)
def test_every_documented_command_runs(case, workspace, tmp_path):
    _, command = case
    name = program(command)
    env, words = as_run(command, workspace)
    if name.startswith("make"):
        target = name.split()[1]
        if target in MAKE_SKIPPED:
            pytest.skip(f"make {target} runs this suite")
        make = ["make", "-C", str(REPO), *words[1:]]
        if target in MAKE_DRY_RUN:  # make -n: the recipe is valid, nothing is run
            result = run([make[0], "-n", *make[1:]], workspace, **env)
        else:  # the demo: its own data, generated into a temporary cache. Two batches of one
            # epoch (trainer limits, not recipe values): its 3 epochs take minutes on 2 busy cores
            shorter = "trainer.max_epochs=1 +trainer.limit_train_batches=2"
            result = run([*make, f"ARGS={shorter} hydra.run.dir={tmp_path / 'run'}"], workspace,
                         CHEXNET_CACHE=str(tmp_path / "cache"), **env)  # fmt: skip
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        return
    if "--help" in words or "--check" in words:  # they do no work: as written
        result = run(words, workspace, **env)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        return
    if name in DRY_RUN:
        if "-m" not in words:  # Hydra's --cfg shows one job (not a sweep)
            shown = run([*words, "--cfg", "job"], workspace, **env)
            assert shown.returncode == 0, shown.stderr[-3000:]
        checked = run([*words, "--check"], workspace, **env)
        assert checked.returncode == 0, (checked.stdout + checked.stderr)[-3000:]
        assert "every setting can be used" in checked.stdout + checked.stderr
        return
    if name != "chexnet-import-weights":
        words.append(f"hydra.run.dir={tmp_path / 'run'}")
    result = run(words, workspace, **env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


# -- Python blocks -----------------------------------------------------------------------------
def missing_names(code: str) -> list[str]:
    """The ``chexnet_pl.<name>`` the code uses (also through ``import chexnet_pl as x``) that the
    package does not have yet (neither an attribute nor a submodule)."""
    import importlib.util

    import chexnet_pl

    aliases = {"chexnet_pl", *re.findall(r"import chexnet_pl as (\w+)", code)}
    used = {name for alias in aliases for name in re.findall(rf"\b{alias}\.(\w+)", code)}
    return sorted(name for name in used if not hasattr(chexnet_pl, name)
                  and importlib.util.find_spec(f"chexnet_pl.{name}") is None)  # fmt: skip


def test_a_block_using_an_api_not_yet_built_is_recognised():
    assert missing_names("import chexnet_pl as cx\nm = cx.no_such_function('x')\n") == [
        "no_such_function"
    ]
    assert missing_names("import chexnet_pl\nchexnet_pl.checkpoints.runs.load_run\n") == []


@pytest.mark.slow
@pytest.mark.parametrize("case", python_blocks(), ids=lambda c: f"{Path(c[0]).name}: python")
def test_every_python_block_runs(case, workspace, tmp_path):
    page, code = case
    missing = missing_names(code)
    if missing:
        pytest.skip(f"{page} uses chexnet_pl.{', chexnet_pl.'.join(missing)}, which the package "
                    "does not have yet")  # fmt: skip
    script = tmp_path / "block.py"
    script.write_text(in_workspace(code, workspace), encoding="utf-8")
    result = run([sys.executable, str(script)], workspace)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


# -- outputs as written ------------------------------------------------------------------------
OUTPUTS = re.compile(r"<!-- outputs\n(.*?)-->\n", re.S)


def output_lists() -> list[tuple[str, list[str], dict[str, bool]]]:
    """(page, commands, {listed name: conditional?}) of every output list of the pages."""
    found = []
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        for match in OUTPUTS.finditer(text):
            commands = block_lines(match.group(1).splitlines())
            found.append((page_name(path), commands, listed_files(text[match.end() :])))
    return found


def listed_files(text: str) -> dict[str, bool]:
    """The names of the table or fenced block at the start of ``text``, each with whether it is
    written only with some setting (its description starts with "with ")."""
    lines = text.lstrip("\n").splitlines()
    names: dict[str, bool] = {}
    if lines[0].startswith("```"):
        for line in lines[1 : lines.index("```", 1)]:
            files, _, comment = line.partition("#")
            for name in files.split(","):
                if name.strip():
                    names[name.strip()] = comment.strip().startswith("with ")
    else:
        for line in lines[2:]:  # after the header and its rule
            if not line.startswith("|"):
                break
            cells = [c.strip() for c in line.strip("|").split("|")]
            for name in re.findall(r"`([^`]+)`", cells[0]):
                names[name] = cells[1].startswith("with ")
    return names


def name_pattern(name: str) -> re.Pattern:
    """A listed name as a pattern of written paths: ``<...>`` any name, ``NNN`` any number; a
    folder (``.../``) everything in it."""
    pattern = re.escape(name).replace("NNN", r"\d+")
    pattern = re.sub(r"<[^>]*>", "[^/]+", pattern.replace("\\<", "<").replace("\\>", ">"))
    return re.compile(pattern + (".+" if name.endswith("/") else ""))


def test_output_lists_are_found_and_read():
    lists = {program(commands[0]): names for _, commands, names in output_lists()}
    assert {"chexnet-train", "chexnet-evaluate", "chexnet-predict"} <= set(lists), lists
    assert lists["chexnet-evaluate"]["reliability.png"] is False
    assert lists["chexnet-evaluate"]["compare.csv"] is True
    assert name_pattern("visualizations/epoch_NNN/").fullmatch("visualizations/epoch_002/a.png")
    assert name_pattern("<image>_<finding>.png").fullmatch("00000100_000_Mass.png")
    assert not name_pattern("<image>.csv").fullmatch("sub/x.csv")
    table = "| file | what |\n| --- | --- |\n| `a.csv`, `b.png` | x |\n| `c.json` | with y |\n\nz"
    assert listed_files(table) == {"a.csv": False, "b.png": False, "c.json": True}
    block = "```text\n.hydra/a.yaml  # the config\nwandb/  # with logger=wandb\n```\n"
    assert listed_files(block) == {".hydra/a.yaml": False, "wandb/": True}


@pytest.mark.slow
@pytest.mark.parametrize("case", output_lists(), ids=lambda c: f"{Path(c[0]).name}: {c[1][0][:60]}")
def test_each_output_list_is_what_its_commands_write(case, workspace, tmp_path):
    """Every file the commands write is listed, and every listed file (but those written only
    with some setting) is written by one of them."""
    page, commands, listed = case
    patterns = {name: name_pattern(name) for name in listed}
    written: set[str] = set()
    for number, command in enumerate(commands):
        env, words = as_run(command, workspace)
        folder = tmp_path / f"run{number}"
        result = run([*words, f"hydra.run.dir={folder}"], workspace, **env)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        written |= {str(f.relative_to(folder)) for f in folder.rglob("*") if f.is_file()}
    unlisted = sorted(f for f in written if not any(p.fullmatch(f) for p in patterns.values()))
    assert unlisted == [], f"{page} does not list these files that {commands} wrote"
    unwritten = sorted(name for name, pattern in patterns.items() if not listed[name]
                       and not any(pattern.fullmatch(f) for f in written))  # fmt: skip
    assert unwritten == [], f"{page} lists these files that {commands} did not write"
