"""The package installs like one: a wheel, installed without -e into a fresh virtual environment,
carries its configs and console scripts, and trains from an empty folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("train", "evaluate", "predict", "visualize", "localize", "download", "prepare",
            "import-weights", "export", "serve")  # fmt: skip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy of what the sdist would hold, so the clone gets no build/ or egg-info.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("src", "conf"):
        shutil.copytree(
            REPO / name, source / name, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__")
        )
    out = tmp_path_factory.mktemp("dist")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--verbose", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), str(source)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    (out / "build.log").write_text(build.stdout + build.stderr)  # what `make setup` would print
    (path,) = out.glob("chexnet_pl-*.whl")
    return path


@pytest.mark.slow  # builds the wheel
def test_the_build_prints_no_setuptools_warning(wheel):
    """Every folder of conf/ is a package of setup.py's: setuptools prints one
    ``BuildBackendWarning`` block per folder that is not (13 of them in `make setup`)."""
    output = (wheel.parent / "build.log").read_text()
    assert "Building wheel" in output or "Created wheel" in output, output[-2000:]
    assert "BuildBackendWarning" not in output and "absent from the `packages`" not in output, [
        line for line in output.splitlines() if "Warning" in line
    ]


@pytest.mark.slow  # launches a process
def test_wheel_carries_every_config_and_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {
        "chexnet_pl/conf/" + p.relative_to(REPO / "conf").as_posix()
        for p in (REPO / "conf").rglob("*.yaml")
    }
    modules = {
        p.relative_to(REPO / "src").as_posix() for p in (REPO / "src" / "chexnet_pl").rglob("*.py")
    }
    assert configs and configs <= names, sorted(configs - names)
    assert modules <= names, sorted(modules - names)
    assert {"chexnet_pl/py.typed", "chexnet_pl/serving/page.html"} <= names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert all(f"chexnet-{c} = " in scripts for c in COMMANDS), scripts


@pytest.mark.slow
def test_wheel_installed_without_e_trains_from_an_empty_folder(wheel, tmp_path):
    """A fresh venv gets the wheel (no -e); its dependencies are this venv's packages (a .pth line:
    no 5 GB torch download), so only the project itself comes from the wheel."""
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    target = Path(
        subprocess.check_output(
            [env_dir / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            text=True,
        ).strip()
    )  # fmt: skip
    (target / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"), "install",
         "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    where = subprocess.check_output(
        [env_dir / "bin" / "python", "-c", "import chexnet_pl; print(chexnet_pl.__file__)"],
        text=True,
        cwd=tmp_path,
    )
    assert where.startswith(str(target)), where  # the wheel's copy, not the source tree
    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(WANDB_MODE="offline", CHEXNET_CACHE=str(tmp_path / "cache"))
    result = subprocess.run(
        [env_dir / "bin" / "chexnet-train", "experiment=demo", "data.synthetic.num_patients=40",
         "data.image_size=32", "data.num_workers=0", "trainer.max_epochs=1",
         "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=2",
         "+trainer.limit_test_batches=2", "trainer.num_sanity_val_steps=0",
         "evaluation.bootstrap_samples=0", "callbacks.visualization.n_images=1"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((work / "outputs" / "train").glob("*/*/checkpoints/last.ckpt"))
    assert len(runs) == 1, sorted(p.as_posix() for p in work.rglob("*"))[:30]
    assert (runs[0].parents[1] / "aucs.csv").is_file()
