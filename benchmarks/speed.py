"""The project's data and compute paths against the common CheXNet reimplementation pattern.

    .venv/bin/python benchmarks/speed.py [--device auto|cpu|cuda] [--quick] [--loading-only]

Everything runs in this one process on this machine, side by side, and each line prints the
baseline, the project's figure and their ratio. The baseline is the usual pattern, written as a
plain PyTorch loop: PIL decode, convert to RGB, torchvision transforms (resize 224, flip, to tensor,
normalise), fp32, NCHW, a standard DataLoader. Loading uses the real NIH sample images in
../shared/data/nih-sample (repeated to a few hundred rows).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from chexnet_pl.config_defaults import shipped
from chexnet_pl.data.batch_augment import BatchAugment
from chexnet_pl.data.cache import open_cache
from chexnet_pl.data.dataset import ChestXrayDataset
from chexnet_pl.data.device_loader import DeviceLoader, load_split
from chexnet_pl.data.nih_table import class_names
from chexnet_pl.data.prepare import build_cache
from chexnet_pl.data.transforms import train_transform
from chexnet_pl.evaluation.predictions import autocast_context
from chexnet_pl.models.module import CheXNetModule, shipped_model
from chexnet_pl.models.precision import resolve_precision
from chexnet_pl.visualization.heatmaps import class_activation_maps, grad_cam

AUGMENT = shipped("data")["augment"]  # the shipped training augmentation

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih-sample"
NUM_CLASSES = 15
TARGETS = {  # ratio to the baseline this project aims for on a 2-core CPU (issues 6 and 16)
    "loading, cached": 30.0,
    "loading, raw PNG": 1.5,
    "training": 2.2,
    "inference": 2.5,
}


# -- the baseline -----------------------------------------------------------------------------
class BaselineDataset(Dataset):
    """The common pattern: PIL → RGB → torchvision transforms → normalised float tensor."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        self.transform = T.Compose(
            [
                T.Resize((224, 224)),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = Image.open(self.paths[index]).convert("RGB")
        return self.transform(image), torch.zeros(NUM_CLASSES)


def baseline_model() -> torch.nn.Module:
    return torchvision.models.densenet121(num_classes=NUM_CLASSES)


# -- measurement helpers ----------------------------------------------------------------------
def loader_rate(dataset: Dataset, workers: int, batch_size: int = 16, epochs: int = 2) -> float:
    """Images/s of a shuffled DataLoader over ``dataset``, timed from its first batch (the
    workers are up) to the end of ``epochs`` passes."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    count, start = 0, None
    for _ in range(epochs):
        for batch in loader:
            if start is None:
                start = time.perf_counter()
                continue
            count += len(batch["img"] if isinstance(batch, dict) else batch[0])
    return count / (time.perf_counter() - start)


def device_loader_rate(loader: DeviceLoader, epochs: int) -> float:
    """Images/s of the device path's batches (index, augment, dict), timed like ``loader_rate``."""
    count, start = 0, None
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            if start is None:
                start = time.perf_counter()
                continue
            count += len(batch["name"])
    _sync(loader.data.images.device)
    return count / (time.perf_counter() - start)


def augment_rates(device: torch.device, batch: int = 16) -> list[tuple[str, float, float]]:
    """Batched flip + affine at 224 px: OpenCV per image vs one grid_sample (issue 16)."""
    images = torch.randint(0, 256, (batch, 224, 224), dtype=torch.uint8, device=device)
    rates = {}
    for warp in ("opencv", "grid") if device.type == "cpu" else ("grid",):
        augment, rng = BatchAugment(**AUGMENT, warp=warp), np.random.default_rng(0)
        augment(images, rng)
        _sync(device)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < 2:
            augment(images, rng)
            count += batch
        _sync(device)
        rates[warp] = count / (time.perf_counter() - start)
    if "opencv" in rates:
        return [("augment a batch: grid_sample vs OpenCV (CPU)", rates["grid"], rates["opencv"])]
    return []


def steps_rate(step, batch_size: int, steps: int, device: torch.device) -> float:
    step()  # warm-up (allocations, cuDNN autotuning)
    step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# -- the figures ------------------------------------------------------------------------------
def loading(rows: int, workers: int, device: torch.device) -> list[tuple[str, float, float]]:
    images = sorted(str(p) for p in (SAMPLE / "images").glob("*.png"))
    if not images:
        raise SystemExit(f"the NIH sample images are not in {SAMPLE}")
    paths = [images[i % len(images)] for i in range(rows)]
    table = pd.DataFrame({"Image Index": [Path(p).name for p in paths], "path": paths})
    labels = np.zeros((rows, NUM_CLASSES), dtype=np.float32)
    names = [f"c{i}" for i in range(NUM_CLASSES)]

    baseline = loader_rate(BaselineDataset(paths), workers)
    raw = ChestXrayDataset(table, labels, names, transform=train_transform(224, **AUGMENT))
    raw_rate = loader_rate(raw, workers)
    rows_out = [("loading, raw PNG", baseline, raw_rate)]
    with tempfile.TemporaryDirectory() as tmp:
        for size in (224, 256):  # a cache at the training size, and a larger one resized down
            cache = open_cache(build_cache(SAMPLE, size, tmp, progress=False), size)
            cached = ChestXrayDataset(
                table,
                labels,
                names,
                transform=train_transform(224, **AUGMENT),
                cache=cache,
                cache_rows=cache.rows_of(table["Image Index"]).astype(np.int64),
            )
            rate = loader_rate(cached, workers, epochs=6)
            rows_out.append((f"loading, cached ({size} px cache)", baseline, rate))
            # The device path (data.loader=device): the same rows resident on the device
            on_device = load_split(cache, cached.cache_rows, labels, table["Image Index"], 224,
                                   device)  # fmt: skip
            loader = DeviceLoader(
                on_device, 16, shuffle=True, seed=0, augment=BatchAugment(**AUGMENT)
            )
            rate = device_loader_rate(loader, epochs=20)
            rows_out.append((f"loading, cached ({size} px, device path)", baseline, rate))
    return rows_out


def project_model(device: torch.device) -> tuple[CheXNetModule, str]:
    model = shipped_model(backbone="densenet121", pretrained=False, class_names=class_names()).to(
        device
    )
    precision = str(resolve_precision("auto", device.type if device.type == "cuda" else "cpu"))
    return model, precision


def _autocast(device: torch.device, precision: str):
    mode = "fp32" if precision.startswith("32") else "auto"
    return autocast_context(device, mode)


def training(device: torch.device, steps: int) -> list[tuple[str, float, float]]:
    batch = 16
    torch.manual_seed(0)
    labels = torch.randint(0, 2, (batch, NUM_CLASSES), device=device).float()

    base = baseline_model().to(device).train()
    base_x = torch.randn(batch, 3, 224, 224, device=device)
    base_opt = torch.optim.Adam(base.parameters(), lr=1e-4)
    criterion = torch.nn.BCEWithLogitsLoss()

    def base_step() -> None:
        base_opt.zero_grad(set_to_none=True)
        criterion(base(base_x), labels).backward()
        base_opt.step()

    base_rate = steps_rate(base_step, batch, steps, device)

    model, precision = project_model(device)
    model.train()
    images = torch.randint(0, 256, (batch, 1, 224, 224), dtype=torch.uint8, device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(enabled=precision == "16-mixed")

    def project_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, precision):
            loss = model._loss(model(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    project_rate = steps_rate(project_step, batch, steps, device)
    return [(f"training ({precision})", base_rate, project_rate)]


def inference(device: torch.device, steps: int) -> list[tuple[str, float, float]]:
    batch = 32
    base = baseline_model().to(device).eval()
    base_x = torch.randn(batch, 3, 224, 224, device=device)

    def base_step() -> None:
        with torch.no_grad():
            base(base_x)

    base_rate = steps_rate(base_step, batch, steps, device)
    model, precision = project_model(device)
    model.eval()
    images = torch.randint(0, 256, (batch, 1, 224, 224), dtype=torch.uint8, device=device)

    def project_step() -> None:
        with torch.inference_mode(), _autocast(device, precision):
            model(images)

    return [(f"inference ({precision})", base_rate, steps_rate(project_step, batch, steps, device))]


class _StepClock(pl.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        _sync(pl_module.device)
        self.times.append(time.perf_counter())


class _Batches(Dataset):
    def __init__(self, count: int, size: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randint(
            0, 256, (count, 1, size, size), dtype=torch.uint8, generator=generator
        )
        self.labels = torch.randint(0, 2, (count, NUM_CLASSES), generator=generator).float()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {
            "img": self.images[index],
            "lab": self.labels[index],
            "idx": index,
            "name": str(index),
        }


def lightning_overhead(
    device: torch.device, steps: int, size: int
) -> list[tuple[str, float, float]]:
    """Steady-state step rate of ``Trainer.fit`` vs a raw loop over the same module and batches.

    Run at a small image size with many steps, so that the per-step cost Lightning adds is not
    hidden by the convolution time (the ratio is then an upper bound on the overhead at 224 px);
    each is run twice, interleaved, and the better rate of each is kept (CPU timing noise).
    """
    batch = 16
    loader = DataLoader(_Batches(batch * (steps + 2), size), batch_size=batch, num_workers=0)

    def fit_rate() -> float:
        torch.manual_seed(0)
        model, precision = project_model(device)
        clock = _StepClock()
        trainer = pl.Trainer(
            accelerator=device.type if device.type == "cuda" else "cpu",
            devices=1,
            precision=precision,
            max_epochs=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            callbacks=[clock],
        )
        model.configure_optimizers = lambda: torch.optim.Adam(model.parameters(), lr=1e-4)
        trainer.fit(model, loader)
        return batch * (len(clock.times) - 2) / (clock.times[-1] - clock.times[1])

    def raw_rate() -> float:
        torch.manual_seed(0)
        model, precision = project_model(device)
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler(enabled=precision == "16-mixed")
        times = []
        for batch_idx, item in enumerate(loader):
            item = {k: v.to(device) if torch.is_tensor(v) else v for k, v in item.items()}
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device, precision):
                loss = model.training_step(item, batch_idx)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            _sync(device)
            times.append(time.perf_counter())
        return batch * (len(times) - 2) / (times[-1] - times[1])

    fits, raws = [], []
    for _ in range(2):
        raws.append(raw_rate())
        fits.append(fit_rate())
    return [(f"Lightning fit vs raw loop ({size} px)", max(raws), max(fits))]


def heatmaps(size: int) -> list[tuple[str, float, float]]:
    """Images/s of all 15 maps: one Grad-CAM call per class vs one CAM pass."""
    model = shipped_model(pretrained=False, class_names=class_names()).eval()
    image = torch.randint(0, 256, (1, 1, size, size), dtype=torch.uint8)
    class_activation_maps(model.net, image)
    start = time.perf_counter()
    for k in range(len(model.class_names)):
        grad_cam(model.net, image, k, "gradcam")
    grad_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(3):
        class_activation_maps(model.net, image)
    cam_seconds = (time.perf_counter() - start) / 3
    return [("heat maps, 15 classes (CAM vs Grad-CAM)", 1 / grad_seconds, 1 / cam_seconds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--rows", type=int, default=320, help="rows of the loading benchmark")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (all paths)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per compute figure")
    parser.add_argument("--quick", action="store_true", help="fewer rows and steps (a smoke run)")
    parser.add_argument("--loading-only", action="store_true", help="only the loading figures")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.steps = 64, 1
    device = torch.device(
        "cuda"
        if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    compute_steps = args.steps * (10 if device.type == "cuda" else 1)
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "CPU"
    print(
        f"device: {device.type} ({name}), {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(
        f"loading: {args.rows} rows over the {SAMPLE.name} PNGs, {args.workers} workers, batch 16, 224 px"
    )

    rows = []
    rows += loading(args.rows, args.workers, device)
    rows += augment_rates(device)
    if not args.loading_only:
        rows += training(device, compute_steps)
        rows += inference(device, compute_steps)
        if args.quick:  # a smoke run: each figure once, small
            rows += lightning_overhead(device, 4, 32)
        else:
            rows += lightning_overhead(device, max(compute_steps * 5, 20), 64)
        if device.type == "cpu":
            rows += heatmaps(64 if args.quick else 224)

    print(f"\n{'figure (images/s)':<42}{'baseline':>10}{'project':>10}{'ratio':>8}{'target':>9}")
    for label, base, project in rows:
        key = label.split(" (")[0]
        target = TARGETS.get(key)
        if key.startswith("Lightning fit vs raw loop"):
            verdict = f"{'≥0.95':>8}{' ok' if project / base >= 0.95 else ' MISSED'}"
        elif target:
            verdict = f"{f'≥{target:g}':>8}{' ok' if project / base >= target else ' MISSED'}"
        else:
            verdict = ""
        print(f"{label:<42}{base:>10.1f}{project:>10.1f}{project / base:>7.2f}x{verdict}")


if __name__ == "__main__":
    main()
