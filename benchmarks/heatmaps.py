"""All 15 class maps in one CAM pass vs one Grad-CAM call per class, on the same image.

    .venv/bin/python benchmarks/heatmaps.py [--size 224] [--repeats 3]

Prints seconds per image for each, the ratio, and the correlation of the two maps of each class.
"""

from __future__ import annotations

import argparse
import time

import torch

from chexnet_pl.data.nih_table import class_names
from chexnet_pl.models.module import shipped_model
from chexnet_pl.visualization.heatmaps import class_activation_maps, grad_cam


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="64 px, 1 repeat (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.size, args.repeats = 64, 1
    torch.manual_seed(0)
    model = shipped_model(pretrained=False, class_names=class_names()).eval()
    image = torch.randint(0, 256, (1, 1, args.size, args.size), dtype=torch.uint8)
    classes = len(model.class_names)

    class_activation_maps(model.net, image)  # warm-up
    start = time.perf_counter()
    for _ in range(args.repeats):
        class_activation_maps(model.net, image)
    cam_seconds = (time.perf_counter() - start) / args.repeats

    start = time.perf_counter()
    for _ in range(args.repeats):
        grads = torch.stack([grad_cam(model.net, image, k, "gradcam")[0] for k in range(classes)])
    grad_seconds = (time.perf_counter() - start) / args.repeats

    # Grad-CAM clips negative evidence (ReLU) before scaling; compare it with CAM clipped the same way.
    with torch.inference_mode():
        features = model.net.forward_features(model.net.prepare_input(image))
        raw = torch.einsum("kc,bchw->bkhw", model.net.classifier.weight, features).clamp_min(0)
        clipped = torch.nn.functional.interpolate(raw, size=image.shape[-2:], mode="bilinear")[0]
    correlations = [
        float(torch.corrcoef(torch.stack([clipped[k].flatten(), grads[k].flatten()]))[0, 1])
        for k in range(classes)
        if clipped[k].max() > 0 and grads[k].max() > 0
    ]
    print(
        f"image {args.size}x{args.size}, DenseNet-121, {torch.get_num_threads()} threads, {classes} classes"
    )
    print(f"{'method':<34}{'s/image':>10}{'ratio':>8}")
    print(f"{'CAM, all classes in one pass':<34}{cam_seconds:>10.3f}{1.0:>8.1f}")
    print(
        f"{'Grad-CAM, one call per class':<34}{grad_seconds:>10.3f}{grad_seconds / cam_seconds:>8.1f}"
    )
    print(
        f"correlation of Grad-CAM with CAM clipped at 0, over the {len(correlations)} classes with positive "
        f"evidence: min {min(correlations):.4f}, mean {sum(correlations) / len(correlations):.4f}"
    )


if __name__ == "__main__":
    main()
