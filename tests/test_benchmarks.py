"""Every script in benchmarks/ runs, in its quick form: a benchmark nobody runs breaks unseen
(``gpu.py --device cpu --quick`` died at its first model for weeks). Each is started as a user
starts it, with its ``--quick`` flag, and must exit 0 and print its table. No timing is judged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CHEXNET_SHARED_DATA", REPO.parent / "shared" / "data"))

# script, its quick arguments, a line of its table, the real data it reads (or None)
QUICK_RUNS = [
    ("gpu.py", ["--device", "cpu", "--quick"], "train, device path + compile", None),
    ("speed.py", ["--device", "cpu", "--quick"], "figure (images/s)", "nih-sample"),
    ("backbones.py", ["--quick"], "| resnet18 |", None),
    ("export.py", ["--quick"], "ONNX Runtime (CPU)", None),
    ("heatmaps.py", ["--quick"], "CAM, all classes in one pass", None),
    ("serve.py", ["--quick"], "requests/s", "nih-sample"),
    ("startup.py", ["--quick"], "ratio to import torch (the floor)", "nih-sample"),
    ("subgroups.py", ["--quick"], "subgroup report", "nih-meta"),
    ("ood.py", ["--quick"], "matplotlib sample photographs", "nih-sample"),
    ("tables.py", ["--quick"], "CheXpert train.csv (real)", "chexpert-meta"),
]


def test_every_benchmark_script_has_a_quick_run():
    scripts = {p.name for p in (REPO / "benchmarks").glob("*.py")}
    run = {script for script, *_ in QUICK_RUNS}
    # gpu_smoke.py is gpu.py --smoke's (tests/test_commands.py runs it)
    assert scripts - run == {"gpu_smoke.py"}, sorted(scripts - run)
    for script in scripts - {"gpu_smoke.py"}:
        assert '"--quick"' in (REPO / "benchmarks" / script).read_text(), script


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "args", "table", "data"), QUICK_RUNS, ids=[s for s, *_ in QUICK_RUNS]
)
def test_a_benchmark_runs_in_its_quick_form(script, args, table, data, tmp_path):
    if data is not None and not (SHARED_DATA / data).is_dir():
        pytest.skip(f"{script} reads {SHARED_DATA / data} (../shared/data is only beside CI)")
    if script == "gpu.py":
        args = [*args, "--out", str(tmp_path / "gpu")]
    env = {**os.environ, "WANDB_MODE": "offline", "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert table in result.stdout, output[-3000:]
