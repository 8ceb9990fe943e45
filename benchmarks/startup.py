"""How long ``chexnet-predict`` takes to answer: start-up (interpreter, imports, config, model) and
per image, on real NIH images, as a user runs it — on PyTorch, and on the ONNX export of the
same checkpoint (``backend=auto`` uses it when ``chexnet-export`` wrote it beside the checkpoint).

    .venv/bin/python benchmarks/startup.py [--repeats 3] [--images 10] [--size 224]

A random DenseNet-121 checkpoint (no download) at ``--size`` px is written to a temporary run
folder and exported (``chexnet-export format=onnx cams=true``, not timed); then, per backend and
each ``--repeats`` times, in fresh processes:

- ``import``: ``python -c "import chexnet_pl.predict"`` (what the command imports before it runs);
- ``one image``: ``chexnet-predict ckpt=... image=<one NIH sample PNG>`` (prediction, table,
  overlay figure written) — the figure a user waits for;
- ``N images``: the same with ``images=<folder of N NIH sample PNGs>``; per image is
  (N images − one image) / (N − 1).

Then the mistakes answered before torch is imported (issue 31: a wrong ``data.root``, a
missing ``ckpt``, ``ckpt=`` a run folder, ``image=`` a CSV), each timed as a ratio to
``python -c "import torch"`` (below 1: the answer comes before torch could have loaded).

Prints the median and the fastest of each, the time ``import torch, torchvision`` takes alone (the
PyTorch backend's floor), the issue-22 target (one image < 3 s wall), the heavy
libraries the command imported (Lightning, torchmetrics, scikit-learn, albumentations and
grad-cam must not be among them; on ONNX Runtime, neither torch), the CPU with its features, and
the load average (other jobs on the machine make every figure slower; compare figures of one run).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = Path(os.environ.get("CHEXNET_SHARED_DATA", REPO.parent / "shared" / "data")) / "nih-sample"
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
# Libraries predict does not need: each costs seconds to import on a small CPU.
HEAVY = (
    "torch",
    "pytorch_lightning",
    "torchmetrics",
    "sklearn",
    "albumentations",
    "pytorch_grad_cam",
)
TARGET_ONE_IMAGE_S = 3.0


def describe_machine() -> str:
    from chexnet_pl.device import cpu_model_and_flags, usable_cores

    (model, flags), cores = cpu_model_and_flags(), usable_cores()
    present = [f for f in CPU_FLAGS if f in flags]
    absent = [f for f in CPU_FLAGS if f not in flags]
    return (
        f"CPU: {model}, {cores} usable cores; has {', '.join(present) or 'none'}"
        f"{'; lacks ' + ', '.join(absent) if absent else ''}; python {platform.python_version()}"
    )


def write_checkpoint(path: Path, image_size: int) -> Path:
    """A random DenseNet-121 run checkpoint, as ``train`` saves one (weights, settings)."""
    import torch

    from chexnet_pl.data.nih_table import class_names
    from chexnet_pl.models.module import shipped_model

    torch.manual_seed(0)  # the shipped model, NIH's 15 outputs, random weights (no download)
    model = shipped_model(backbone="densenet121", pretrained=False, class_names=class_names())
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "datamodule_hyper_parameters": {"image_size": image_size},
        },
        path,
    )
    return path


def timed(command: list[str], status: int = 0) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if done.returncode != status:
        raise SystemExit(f"{command} exited {done.returncode}, not {status}: {done.stderr[-800:]}")
    return time.perf_counter() - started


def mistakes(bin_dir: Path, tmp: Path, checkpoint: Path, image: Path) -> dict[str, list[str]]:
    """Each mistake the commands answer before importing torch, as a command line."""
    table = tmp / "labels.csv"
    table.write_text("Image Index,Finding Labels\nx.png,No Finding\n")
    run_folder = checkpoint.parent.parent
    out = f"hydra.run.dir={tmp / 'mistakes'}"
    return {
        "wrong data.root": [str(bin_dir / "chexnet-train"), "data.root=/nonexistent", out],
        "missing ckpt": [str(bin_dir / "chexnet-evaluate"), f"ckpt={tmp / 'none.ckpt'}", out],
        "ckpt= a run folder": [str(bin_dir / "chexnet-evaluate"), f"ckpt={run_folder}", out],
        "image= a CSV": [str(bin_dir / "chexnet-predict"), f"ckpt={checkpoint}", f"image={table}",
                         out],
    }  # fmt: skip


def imported_heavy(checkpoint: Path, image: Path, out: Path, backend: str) -> list[str]:
    """The heavy libraries a real ``predict`` run has in ``sys.modules`` when it ends."""
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['chexnet-predict', 'ckpt={checkpoint}', 'image={image}', 'out={out}', "
        f"'backend={backend}']\n"
        "try:\n    runpy.run_module('chexnet_pl.predict', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        f"print('IMPORTED:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO,
                            capture_output=True, text=True)  # fmt: skip
    line = next(x for x in reversed(result.stdout.splitlines()) if x.startswith("IMPORTED:"))
    return [m for m in line.removeprefix("IMPORTED:").split(",") if m]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--quick", action="store_true", help="1 run each, 2 images at 64 px")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.images, args.size = 1, 2, 64
    pngs = sorted((SAMPLE / "images").glob("*.png"))
    if len(pngs) < args.images:
        sys.exit(f"needs {args.images} NIH sample PNGs in {SAMPLE / 'images'}")
    predict = shutil.which("chexnet-predict", path=str(Path(sys.executable).parent))
    if predict is None:
        sys.exit("chexnet-predict is not installed beside this python (make setup)")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = write_checkpoint(tmp / "run" / "checkpoints" / "best.ckpt", args.size)
        export = shutil.which("chexnet-export", path=str(Path(sys.executable).parent))
        subprocess.run([export, f"ckpt={checkpoint}", "format=onnx", "cams=true",
                        f"hydra.run.dir={tmp / 'export'}"], check=True, cwd=REPO,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        folder = tmp / "images"
        folder.mkdir()
        for png in pngs[: args.images]:
            (folder / png.name).symlink_to(png)
        runs = {
            backend: {"import": [], "one image": [], "N images": []}
            for backend in ("torch", "onnx")
        }
        floor = []  # what the PyTorch backend cannot start without
        for repeat in range(args.repeats):
            floor.append(timed([sys.executable, "-c", "import torch, torchvision"]))
            for backend, times in runs.items():
                base = [predict, f"ckpt={checkpoint}", f"backend={backend}"]
                times["import"].append(timed([sys.executable, "-c", "import chexnet_pl.predict"]))
                times["one image"].append(
                    timed([*base, f"image={pngs[0]}", f"out={tmp / f'{backend}1{repeat}'}"])
                )
                times["N images"].append(
                    timed([*base, f"images={folder}", f"out={tmp / f'{backend}n{repeat}'}"])
                )
        heavy = {b: imported_heavy(checkpoint, pngs[0], tmp / f"modules_{b}", b) for b in runs}
        wrong = mistakes(Path(sys.executable).parent, tmp, checkpoint, pngs[0])
        torch_alone, answered = [], {name: [] for name in wrong}
        for _ in range(args.repeats):
            torch_alone.append(timed([sys.executable, "-c", "import torch"]))
            for name, command in wrong.items():
                answered[name].append(timed(command, status=2))
    load_after = os.getloadavg()[0]
    print(describe_machine())
    print(f"load average (1 min) before / after: {load_before:.2f} / {load_after:.2f}")
    print(f"chexnet-predict, random DenseNet-121 at {args.size} px, 1024x1024 NIH sample PNGs, "
          f"{args.repeats} runs each; seconds, median (fastest):")  # fmt: skip
    print(f"  {'':<14}{'PyTorch':>18}{'ONNX Runtime':>18}")
    rows = {}
    for name in ("import", "one image", "N images"):
        rows[name] = {b: runs[b][name] for b in runs}
    rows["per image"] = {
        b: [
            (n - one) / (args.images - 1)
            for n, one in zip(runs[b]["N images"], runs[b]["one image"], strict=True)
        ]
        for b in runs
    }
    for name, values in rows.items():
        label = f"{args.images} images" if name == "N images" else name
        cells = "".join(f"{statistics.median(v):>10.2f} ({min(v):5.2f})" for v in values.values())
        print(f"  {label:<14}{cells}")
    print(f"  {'import torch, torchvision':<26}{statistics.median(floor):>6.2f} ({min(floor):5.2f})"
          "  (the PyTorch backend's floor)")  # fmt: skip
    for backend, label in (("torch", "PyTorch"), ("onnx", "ONNX Runtime")):
        one = statistics.median(runs[backend]["one image"])
        verdict = "meets" if one < TARGET_ONE_IMAGE_S else "misses"
        print(f"one image on {label}: {one:.2f} s, {verdict} the issue-22 target (< {TARGET_ONE_IMAGE_S:.0f} s); "
              f"heavy libraries imported: {', '.join(heavy[backend]) or 'none'}")  # fmt: skip
    floor_s = statistics.median(torch_alone)
    print(f"mistakes, answered before torch is imported (exit 2); seconds, median (fastest), and "
          f"the ratio to import torch (the floor): {floor_s:.2f} s")  # fmt: skip
    for name, values in answered.items():
        print(f"  {name:<22}{statistics.median(values):>6.2f} ({min(values):5.2f})"
              f"{statistics.median(values) / floor_s:>8.2f}x")  # fmt: skip
    if statistics.median(floor) >= TARGET_ONE_IMAGE_S:
        print(f"on this machine importing torch and torchvision alone takes "
              f"{statistics.median(floor):.2f} s: the target is reached with the checkpoint's ONNX "
              "export beside it (chexnet-export format=onnx cams=true), which backend=auto uses")  # fmt: skip


if __name__ == "__main__":
    main()
