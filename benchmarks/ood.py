"""Detection AUROC of the out-of-distribution flag (chexnet_pl.ood): real X-rays against inputs
the model was not trained for.

    .venv/bin/python benchmarks/ood.py [--ckpt best.ckpt] [--size 128] [--batches 6] [--quick]

In distribution: the NIH sample's test-split X-rays (../shared/data/nih-sample; the flag is fitted
on its training split and thresholded on its validation split). Out of distribution, each set
scored against them: matplotlib's sample photographs (``matplotlib.cbook.get_sample_data``,
files shipped with matplotlib: each photograph and four crops of it), the same test X-rays
rotated 90°, inverted (255 - x), cut to their top-left quarter, and uniform noise images.
Without ``--ckpt``, the demo recipe (DenseNet-121, no downloaded weights) is trained on the
sample first, as ``chexnet-train`` would, which fits the flag into its best.ckpt.
Prints the machine, then per set: its images, the AUROC of ``ood_score`` and the share flagged
at the threshold (for the X-rays themselves: the false-alarm rate).
"""

from __future__ import annotations

import argparse
import logging
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

import chexnet_pl
from chexnet_pl.device import cpu_model_and_flags, usable_cores

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "nih-sample"
PHOTOS = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")


def photographs() -> list[np.ndarray]:
    """matplotlib's sample photographs in gray, each whole and as four half-size crops."""
    from matplotlib.cbook import get_sample_data

    images = []
    for name in PHOTOS:
        gray = np.asarray(Image.open(get_sample_data(name, asfileobj=False)).convert("L"))
        h, w = gray.shape
        images.append(gray)
        images += [gray[y : y + h // 2, x : x + w // 2] for y in (0, h // 2) for x in (0, w // 2)]
    return images


def train_tiny(size: int, batches: int, folder: Path) -> Path:
    run = chexnet_pl.train([
        "experiment=demo", f"data.root={SAMPLE}", "data.synthetic=null",
        f"data.image_size={size}", "data.batch_size=8", "data.num_workers=0",
        "trainer.max_epochs=1", f"+trainer.limit_train_batches={batches}",
        "trainer.precision=32-true", "trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false", "test=false",
        "callbacks.visualization.n_images=0", f"hydra.run.dir={folder / 'run'}",
    ])  # fmt: skip
    return run / "checkpoints" / "best.ckpt"


def test_xrays() -> list[np.ndarray]:
    names = (SAMPLE / "test_list.txt").read_text().split()
    return [np.asarray(Image.open(SAMPLE / "images" / n).convert("L")) for n in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, help="a checkpoint with its OOD flag fitted")
    parser.add_argument("--size", type=int, default=128, help="training image size (no --ckpt)")
    parser.add_argument("--batches", type=int, default=6, help="training batches (no --ckpt)")
    parser.add_argument("--quick", action="store_true", help="64 px, 2 batches (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.size, args.batches = 64, 2
    logging.basicConfig(level=logging.ERROR)
    import torch

    cpu, flags = cpu_model_and_flags()
    print(f"machine: {cpu or platform.processor() or 'CPU'}, {usable_cores()} usable cores, "
          f"AVX-512: {'avx512f' in flags}, torch {torch.__version__}, {torch.get_num_threads()} "
          "threads")  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        ckpt = args.ckpt or train_tiny(args.size, args.batches, Path(scratch))
        model = chexnet_pl.load(ckpt)
        if model.ood is None:
            raise SystemExit(f"{ckpt} has no OOD flag: chexnet-evaluate ckpt={ckpt} ood.fit=true")
        print(f"model: {ckpt.name if args.ckpt else f'demo recipe, {args.size} px, {args.batches} batches'}; "
              f"flag fitted on {model.ood.n_images} training images, threshold "
              f"{model.ood.threshold:.1f} for a {model.ood.false_alarm_rate:.0%} false-alarm rate "
              f"on {model.ood.n_val} validation images ({time.perf_counter() - started:.0f} s)")  # fmt: skip
        xrays = test_xrays()
        rng = np.random.default_rng(0)
        sets = {
            "matplotlib sample photographs": photographs(),
            "X-rays rotated 90°": [np.rot90(x).copy() for x in xrays],
            "X-rays inverted": [255 - x for x in xrays],
            "X-rays cut to a quarter": [x[: x.shape[0] // 2, : x.shape[1] // 2] for x in xrays],
            "uniform noise": [rng.integers(0, 256, (256, 256), dtype=np.uint8) for _ in xrays],
        }
        inside = model.predict(xrays)["ood_score"].to_numpy()
        print(f"\n{'set (against ' + str(len(xrays)) + ' test X-rays)':<36}{'images':>7}"
              f"{'AUROC':>8}{'flagged':>9}")  # fmt: skip
        print(f"{'test X-rays (false alarms)':<36}{len(xrays):>7}{'':>8}"
              f"{np.mean(inside > model.ood.threshold):>9.0%}")  # fmt: skip
        for name, images in sets.items():
            scores = model.predict(images)["ood_score"].to_numpy()
            truth = np.r_[np.zeros(len(inside)), np.ones(len(scores))]
            auroc = roc_auc_score(truth, np.r_[inside, scores])
            flagged = np.mean(scores > model.ood.threshold)
            print(f"{name:<36}{len(images):>7}{auroc:>8.3f}{flagged:>9.0%}")


if __name__ == "__main__":
    main()
