"""Parameters, inference and training throughput of every registered backbone on this machine.

    .venv/bin/python benchmarks/backbones.py [--size 224] [--iterations 2] [--backbones resnet18 alexnet]

For each backbone (15 outputs, random weights, the module's own uint8 → normalised input path,
channels-last as in training): forward images/s at batch 32 in eval mode without gradients, and
training images/s at batch 16 (forward, BCE loss — with GoogLeNet's auxiliary heads —, backward,
Adam step), each the median of ``--iterations`` timed batches after one warm-up batch. Prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from chexnet_pl.data.nih_table import class_names
from chexnet_pl.models.backbones import BACKBONES
from chexnet_pl.models.module import AUX_LOSS_WEIGHT, shipped_model

FORWARD_BATCH = 32
TRAIN_BATCH = 16


def _median_seconds(step, iterations: int) -> float:
    step()  # warm-up: allocator, oneDNN kernel selection
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, size: int, iterations: int) -> dict[str, float | str]:
    torch.manual_seed(0)
    model = shipped_model(backbone=name, pretrained=False, class_names=class_names())
    inference_params = sum(
        p.numel() for n, p in model.net.named_parameters() if not n.startswith("aux_heads.")
    )
    aux_params = sum(p.numel() for p in model.net.aux_heads.parameters())
    images = torch.randint(0, 256, (FORWARD_BATCH, 1, size, size), dtype=torch.uint8)
    labels = (torch.rand(TRAIN_BATCH, len(model.class_names)) < 0.2).float()

    model.eval()

    def forward() -> None:
        with torch.inference_mode():
            model(images)

    forward_seconds = _median_seconds(forward, iterations)

    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    bce = torch.nn.functional.binary_cross_entropy_with_logits

    def train_step() -> None:
        logits, aux_logits = model.net.forward_with_aux(
            model.net.prepare_input(images[:TRAIN_BATCH])
        )
        loss = bce(logits, labels) + AUX_LOSS_WEIGHT * sum(bce(a, labels) for a in aux_logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    train_seconds = _median_seconds(train_step, iterations)
    return {
        "backbone": name,
        "params_m": inference_params / 1e6,
        "aux_params_m": aux_params / 1e6,
        "forward_ips": FORWARD_BATCH / forward_seconds,
        "train_ips": TRAIN_BATCH / train_seconds,
        "cam": "yes" if model.net.cam_available else "no (Grad-CAM)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument(
        "--quick", action="store_true", help="resnet18 at 64 px, 1 batch (a smoke run)"
    )
    args = parser.parse_args()
    if args.quick:
        args.size, args.iterations, args.backbones = 64, 1, ["resnet18"]
    print(
        f"{args.size}x{args.size} px, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}; median of {args.iterations} batches after 1 warm-up"
    )
    print(
        f"| backbone | params (M) | forward img/s (batch {FORWARD_BATCH}) "
        f"| train img/s (batch {TRAIN_BATCH}) | CAM |"
    )
    print("| --- | ---: | ---: | ---: | --- |")
    notes = []
    for name in args.backbones:
        row = measure(name, args.size, args.iterations)
        if row["aux_params_m"]:
            notes.append(f"{name}'s auxiliary heads add {row['aux_params_m']:.1f}M in training")
        print(
            f"| {row['backbone']} | {row['params_m']:.1f} | {row['forward_ips']:.1f} "
            f"| {row['train_ips']:.1f} | {row['cam']} |",
            flush=True,
        )
    print(
        "params: the network that predicts"
        + "".join(f"; {note}" for note in notes)
        + ". train: forward + loss + backward + Adam step."
    )


if __name__ == "__main__":
    main()
