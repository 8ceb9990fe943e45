"""CPU inference of the served model: PyTorch (eager) against its ONNX Runtime and TorchScript
exports, same weights, same uint8 input.

    .venv/bin/python benchmarks/export.py [--backbone densenet121] [--size 224] [--batches 1 16]
        [--repeats 5] [--cams]

Prints images/s (the median of ``--repeats`` timed runs after one warm-up) per batch size and
runtime, and the largest difference of each export's probabilities from PyTorch's.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from chexnet_pl.data.nih_table import class_names
from chexnet_pl.models.module import shipped_model
from chexnet_pl.serving.export import example_images, onnx_bytes, runner, torchscript_bytes
from chexnet_pl.serving.served_model import ServedModel


def images_per_second(
    run: Callable[[np.ndarray], object], images: np.ndarray, repeats: int
) -> float:
    run(images)  # warm-up (ONNX Runtime and TorchScript optimise on the first call)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(images)
        seconds.append(time.perf_counter() - start)
    return len(images) / statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="densenet121")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cams", action="store_true", help="also output the CAMs of every class")
    parser.add_argument("--quick", action="store_true", help="resnet18 at 64 px, batch 1, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.backbone, args.size, args.batches, args.repeats = "resnet18", 64, [1], 1
    torch.manual_seed(0)
    module = shipped_model(
        backbone=args.backbone, pretrained=False, class_names=class_names()
    ).eval()
    served = ServedModel(module.net, cams=args.cams).eval()

    def pytorch(images: np.ndarray):
        with torch.inference_mode():
            return served(torch.from_numpy(images))

    start = time.perf_counter()
    onnx = runner("onnx", onnx_bytes(served, args.size))
    onnx_export_s = time.perf_counter() - start
    start = time.perf_counter()
    torchscript = runner("torchscript", torchscript_bytes(served, args.size))
    torchscript_export_s = time.perf_counter() - start
    runtimes = {"PyTorch (eager)": pytorch, "ONNX Runtime (CPU)": onnx, "TorchScript": torchscript}

    check = example_images(4, args.size, seed=1).numpy()
    expected = pytorch(check)
    expected = (expected[0] if args.cams else expected).numpy()
    print(
        f"{args.backbone}, {args.size}x{args.size} uint8 input, outputs: "
        f"{served.output_names}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"export time: ONNX {onnx_export_s:.1f} s, TorchScript {torchscript_export_s:.1f} s")
    for name in ("ONNX Runtime (CPU)", "TorchScript"):
        difference = np.abs(runtimes[name](check)[0] - expected).max()
        print(f"largest difference from PyTorch, {name}: {difference:.1e}")
    header = f"{'runtime':<22}" + "".join(f"{f'batch {b} img/s':>18}" for b in args.batches)
    print(header)
    for name, run in runtimes.items():
        rates = [
            images_per_second(run, example_images(b, args.size).numpy(), args.repeats)
            for b in args.batches
        ]
        print(f"{name:<22}" + "".join(f"{rate:>18.1f}" for rate in rates))


if __name__ == "__main__":
    main()
