"""GPU training at the hardware's pace (issue 16): one prepared run, one table.

    python benchmarks/gpu.py --smoke                  # first, on a lent GPU: the shipped trainer=gpu
                                                      # defaults end to end, < 2 minutes (gpu_smoke.py)
    python benchmarks/gpu.py --smoke --device cpu     # the same with trainer=cpu (the slow tier)
    python benchmarks/gpu.py                          # a CUDA host: <= 5 minutes, compile included
    python benchmarks/gpu.py --device cpu --quick     # the same code paths on a CPU (ResNet-18), ~1 min

What it does, in one process:

1. prints the device, the CPU (model, cores, AVX2/AVX-512/AMX flags) and package versions;
2. writes a synthetic NIH-format release (``--images``, default 20,000 at 224 px): a base set of
   distinct images rendered once, hard-linked under new names and patients up to the count;
3. runs ``prepare`` on it (the uint8 cache);
4. times steady-state training through the project's own ``train`` (``chexnet_pl.train.train``
   with the shipped configs, ``experiment=densenet121 model.pretrained=false``) at batch 16 and
   64 for: the worker path (``data.loader=workers``), the device path (``data.loader=device``)
   and the device path with ``model.compile=true``. The rate is the median of the
   ``train/img_s`` intervals the ``Throughput`` callback measures (every ``log_every_n_steps``
   steps), leaving out the first interval (warm-up, compilation);
5. the plain-PyTorch baseline step (torchvision DenseNet-121, fp32, NCHW, float input, Adam) and
   the project's bare step (uint8 input normalised in the model, channels_last, the run's
   precision), no data and no Lightning;
6. evaluation images/s (``evaluation.predictions.predict`` over the test split, batch 256) on
   both loaders;
7. SM utilisation from ``nvidia-smi dmon`` during each training run's timed steps, when present;

and prints one table with the ratios to the worker path and to the plain step.

On a bare CUDA host (Python 3.12 with torch 2.11, torchvision 0.26, pytorch-lightning 2.6.6,
torchmetrics, pandas, OpenCV; no network), the packages the project needs beyond those come
from a wheel folder built on a machine with network, in the project root:

    bash ../shared/tools/device-wheels.sh .whl   # hydra-core, omegaconf, antlr4, albumentations,
                                                 # albucore, pydantic..., grad-cam, ttach
    # (kornia is not needed: the batched augmentation is torch's grid_sample on the GPU; a
    #  package the script lacks is named at start-up, add it with
    #  pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl NAME)

and on the host, from the project root (the folder travels with the working tree):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site:$PWD/src python3 benchmarks/gpu.py

Nothing is downloaded at run time (``model.pretrained=false``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REQUIRED = ("hydra", "omegaconf", "albumentations", "pytorch_grad_cam", "pandas", "cv2")


def check_imports() -> None:
    missing = []
    for name in REQUIRED:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise SystemExit(
            f"missing packages: {missing}. Install the wheel folder first (see this file's "
            "docstring): python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl "
            "and run with PYTHONPATH=/tmp/site:$PWD/src"
        )


check_imports()

import pandas as pd  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402

from chexnet_pl.callbacks import Throughput  # noqa: E402
from chexnet_pl.command_runner import config_dir  # noqa: E402
from chexnet_pl.data.nih_table import class_names  # noqa: E402
from chexnet_pl.data.prepare import build_cache  # noqa: E402
from chexnet_pl.data.synthetic import generate_synthetic_nih  # noqa: E402
from chexnet_pl.device import cpu_model_and_flags, usable_cores  # noqa: E402
from chexnet_pl.evaluation.predictions import predict  # noqa: E402
from chexnet_pl.models.module import shipped_model  # noqa: E402
from chexnet_pl.models.precision import autocast_context, resolve_precision  # noqa: E402
from chexnet_pl.train import train  # noqa: E402

log = logging.getLogger("gpu_benchmark")
NUM_CLASSES = 15
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


# -- environment ------------------------------------------------------------------------------
def describe(device: torch.device) -> str:
    (model, flags), cores = cpu_model_and_flags(), usable_cores()
    gpu = (
        f"{torch.cuda.get_device_name(device)} ({torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB)"
        if device.type == "cuda"
        else "none (CPU run)"
    )
    present = [f for f in CPU_FLAGS if f in flags]
    return (
        f"device: {device} | GPU: {gpu}\n"
        f"CPU: {model}, {cores} usable cores, flags: {', '.join(present) or 'none of ' + str(CPU_FLAGS)}\n"
        f"python {platform.python_version()}, torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}, pytorch-lightning {pl.__version__}"
    )


# -- data -------------------------------------------------------------------------------------
def make_release(root: Path, images: int, size: int, base_images: int) -> Path:
    """NIH-format release of ``images`` PNGs: ``base_images`` rendered, the rest hard links."""
    marker = root / f".bench_{images}_{size}_{base_images}"
    if marker.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    base = root.parent / f"{root.name}_base"
    shutil.rmtree(base, ignore_errors=True)
    per_patient = 3
    generate_synthetic_nih(
        base, num_patients=max(base_images // per_patient, 4), images_per_patient=per_patient,
        image_size=size, prevalence=0.15, seed=0,
    )  # fmt: skip
    table = pd.read_csv(base / "Data_Entry_2017_v2020.csv")
    test = set((base / "test_list.txt").read_text().split())
    patients = int(table["Patient ID"].max())
    copies = -(-images // len(table))
    (root / "images").mkdir(parents=True)
    frames, train_val, test_list = [], [], []
    for copy in range(copies):
        frame = table.copy()
        frame["Patient ID"] = table["Patient ID"] + copy * patients
        frame["Image Index"] = [
            f"{pid:08d}_{follow:03d}.png"
            for pid, follow in zip(frame["Patient ID"], table["Follow-up #"], strict=True)
        ]
        for old, new in zip(table["Image Index"], frame["Image Index"], strict=True):
            os.link(base / "images" / old, root / "images" / new)
            (test_list if old in test else train_val).append(new)
        frames.append(frame)
    release = pd.concat(frames).head(images)
    kept = set(release["Image Index"])
    release.to_csv(root / "Data_Entry_2017_v2020.csv", index=False)
    (root / "train_val_list.txt").write_text("\n".join(n for n in train_val if n in kept) + "\n")
    (root / "test_list.txt").write_text("\n".join(n for n in test_list if n in kept) + "\n")
    marker.touch()
    return root


# -- GPU utilisation --------------------------------------------------------------------------
class Utilisation:
    """``nvidia-smi dmon -s u`` in the background; each line stamped when it arrives."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self.process = None
        if shutil.which("nvidia-smi"):
            self.process = subprocess.Popen(
                ["nvidia-smi", "dmon", "-s", "u", "-d", "1"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
            )  # fmt: skip
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            fields = line.split()
            if fields and not line.startswith("#") and len(fields) > 1 and fields[1].isdigit():
                self.samples.append((time.time(), float(fields[1])))

    def between(self, start: float, end: float) -> str:
        values = [sm for t, sm in self.samples if start <= t <= end + 0.5]
        if self.process is None:
            return "n/a"
        return f"{statistics.mean(values):.0f}/{max(values):.0f}" if values else "-"

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()


# -- runs -------------------------------------------------------------------------------------
def compose_cfg(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=overrides)


def train_run(args, root: Path, out: Path, loader: str, batch: int, compiled: bool) -> dict:
    name = f"{loader}{'_compiled' if compiled else ''}_b{batch}"
    overrides = [
        "experiment=densenet121",
        f"model.backbone={args.backbone}",
        "model.pretrained=false",
        f"data.root={root}",
        f"data.image_size={args.size}",
        f"data.batch_size={batch}",
        "data.eval_batch_size=256",
        f"data.loader={loader}",
        f"data.num_workers={args.workers}",
        "data.check_images=false",
        "trainer.max_epochs=1",
        f"+trainer.limit_train_batches={args.steps}",
        "+trainer.limit_val_batches=1",
        "trainer.num_sanity_val_steps=0",
        f"trainer.log_every_n_steps={args.log_every}",
        "trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false",
        "test=false",
        "callbacks.visualization.n_images=0",
        f"paths.output_dir={out / name}",
    ]
    if args.device == "cpu":
        overrides += ["trainer.accelerator=cpu"]
    if compiled:
        overrides += [
            "model.compile=true",
            f"model.compile_backend={args.compile_backend}",
            f"model.compile_mode={args.compile_mode}",
        ]
        torch._dynamo.reset()
    started = time.perf_counter()
    _, objects = train(compose_cfg(overrides))
    wall = time.perf_counter() - started
    clock = next(c for c in objects["trainer"].callbacks if isinstance(c, Throughput))
    rates = clock.train_rates[1:] or clock.train_rates
    model = objects["model"]
    result = {
        "what": f"train, {loader} path{' + compile' if compiled else ''}",
        "batch": batch,
        "img_s": statistics.median(rates) if rates else float("nan"),
        "sm": UTIL.between(clock.train_marks[0], clock.train_marks[-1])
        if len(clock.train_marks) > 1
        else "-",
        "compile_s": model.compile_seconds,
        "wall_s": wall,
        "precision": str(objects["trainer"].precision),
    }
    log.info("%s: %s img/s (intervals %s), run %.0f s", name, rate(result["img_s"]),
             [rate(r) for r in clock.train_rates], wall)  # fmt: skip
    if args.eval and batch == args.batches[-1] and not compiled:
        result["eval"] = eval_rate(model, objects["datamodule"], objects["trainer"])
    del objects
    return result


def eval_rate(model, datamodule, trainer) -> float:
    """Images/s of ``predict`` (the evaluation code path) over the test split, second pass."""
    loader = datamodule.eval_dataloader("test")
    names = model.class_names
    predict(model, loader, names)  # warm-up: cuDNN autotuning, first copies
    _sync()
    start = time.perf_counter()
    table = predict(model, loader, names)
    _sync()
    return len(table) / (time.perf_counter() - start)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bare_steps(
    device: torch.device, size: int, batch: int, steps: int, warmup: int = 3
) -> dict[str, float]:
    """Plain PyTorch step (fp32, NCHW, float input) and the project's bare step, no data."""
    labels = torch.randint(0, 2, (batch, NUM_CLASSES), device=device).float()
    criterion = torch.nn.BCEWithLogitsLoss()
    plain = torchvision.models.densenet121(num_classes=NUM_CLASSES).to(device).train()
    plain_x = torch.randn(batch, 3, size, size, device=device)
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-4)

    def plain_step() -> None:
        plain_opt.zero_grad(set_to_none=True)
        criterion(plain(plain_x), labels).backward()
        plain_opt.step()

    project = shipped_model(pretrained=False, class_names=class_names()).to(device).train()
    precision = str(resolve_precision("auto", device.type))
    images = torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8, device=device)
    project_opt = torch.optim.Adam(project.parameters(), lr=1e-4, fused=device.type == "cuda")
    mode = "fp32" if precision.startswith("32") else "auto"

    def project_step() -> None:
        project_opt.zero_grad(set_to_none=True)
        with autocast_context(device, mode):
            loss = project._loss(project(images), labels)
        loss.backward()
        project_opt.step()

    rates = {}
    for name, step in (("plain", plain_step), ("project", project_step)):
        for _ in range(warmup):
            step()
        _sync()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync()
        rates[name] = steps * batch / (time.perf_counter() - start)
    rates["precision"] = precision
    return rates


def rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def print_table(rows: list[dict], plain: dict[int, dict]) -> None:
    workers = {r["batch"]: r["img_s"] for r in rows if r["what"] == "train, workers path"}
    header = (
        f"{'what':<34}{'batch':>6}{'img/s':>9}{'vs workers':>12}{'vs plain':>10}"
        f"{'SM % mean/max':>15}{'compile s':>11}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for batch, rates in sorted(plain.items()):
        print(f"{'bare step, plain PyTorch fp32':<34}{batch:>6}{rate(rates['plain']):>9}"
              f"{'':>12}{1.0:>9.2f}x")  # fmt: skip
        print(f"{'bare step, project (' + rates['precision'] + ')':<34}{batch:>6}"
              f"{rate(rates['project']):>9}{'':>12}{rates['project'] / rates['plain']:>9.2f}x")  # fmt: skip
    for row in rows:
        base = workers.get(row["batch"])
        versus = f"{row['img_s'] / base:>11.2f}x" if base else f"{'':>12}"
        against = plain.get(row["batch"], {}).get("plain")
        ratio = f"{row['img_s'] / against:>9.2f}x" if against else f"{'':>10}"
        compiled = f"{row['compile_s']:>11.1f}" if row.get("compile_s") else f"{'':>11}"
        print(f"{row['what']:<34}{row['batch']:>6}{rate(row['img_s']):>9}{versus}{ratio}"
              f"{row['sm']:>15}{compiled}")  # fmt: skip
    for row in rows:
        if "eval" in row:
            print(f"{'eval (predict), ' + row['what'].split(', ')[1]:<34}"
                  f"{'256':>6}{rate(row['eval']):>9}")  # fmt: skip


UTIL: Utilisation


def main() -> None:
    global UTIL
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="the shipped trainer=gpu defaults end to end, then stop (< 2 min)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="every path once, small (CPU: minutes)"
    )
    parser.add_argument("--backbone", default="densenet121", help="model.backbone of the runs")
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--base-images", type=int, default=600, help="distinct rendered images")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", default="16,64")
    parser.add_argument("--steps", type=int, default=70, help="training steps per run")
    parser.add_argument("--log-every", type=int, default=10, help="steps per timed interval")
    parser.add_argument("--workers", default="auto", help="data.num_workers of the worker path")
    parser.add_argument("--compile-mode", default="default")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-eval", dest="eval", action="store_false")
    parser.add_argument(
        "--out", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "chexnet_gpu_bench")
    )
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.smoke:
        from gpu_smoke import smoke

        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
        print(describe(torch.device(args.device)), flush=True)
        raise SystemExit(smoke(args.device, Path(args.out) / "smoke"))
    if args.quick:  # every code path once, small: a smoke run before a GPU session
        args.images, args.base_images, args.size = 300, 60, 32
        args.steps, args.log_every, args.batches = 4, 1, "4,8"
        if args.device == "cpu":  # the slow tier's smoke run: each path once, in about a minute
            args.compile_backend = "eager"  # inductor compiles DenseNet for ~9 min on 2 cores
            args.images, args.base_images, args.batches, args.steps = 120, 30, "4", 3
            args.backbone = "resnet18"  # tracing DenseNet-121 even for eager takes ~80 s
    args.batches = [int(b) for b in args.batches.split(",")]
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    logging.getLogger("chexnet_pl.data.datamodule").setLevel(logging.INFO)
    logging.getLogger("chexnet_pl.models.module").setLevel(logging.INFO)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(describe(device), flush=True)

    started = time.perf_counter()
    out = Path(args.out)
    root = make_release(out / "nih", args.images, args.size, args.base_images)
    log.info("release: %d images (%.0f s)", args.images, time.perf_counter() - started)
    mark = time.perf_counter()
    build_cache(root, args.size, workers=os.cpu_count() or 1, progress=False)
    log.info("prepare: %.0f s", time.perf_counter() - mark)

    warmup = 1 if args.quick else 3
    plain = {
        b: bare_steps(device, args.size, b, max(args.steps // 4, 2), warmup) for b in args.batches
    }
    UTIL = Utilisation()
    rows = []
    try:
        for batch in args.batches:
            rows.append(train_run(args, root, out / "runs", "workers", batch, False))
            rows.append(train_run(args, root, out / "runs", "device", batch, False))
            if not args.no_compile and (batch == args.batches[-1] or not args.quick):
                rows.append(train_run(args, root, out / "runs", "device", batch, True))
    finally:
        UTIL.stop()
    if args.eval:
        for row in rows:
            if "eval" in row:
                log.info("eval %s: %s img/s", row["what"], rate(row["eval"]))
    print(f"\n{describe(device)}\nprecision {rows[0]['precision'] if rows else '?'}, "
          f"{args.images} images at {args.size} px, {args.steps} steps per run, "
          f"median of {args.log_every}-step intervals after the first; total "
          f"{time.perf_counter() - started:.0f} s")  # fmt: skip
    print_table(rows, plain)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
