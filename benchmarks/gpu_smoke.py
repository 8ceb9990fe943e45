"""``benchmarks/gpu.py --smoke``: the shipped ``trainer=gpu`` defaults end to end, in minutes.

The first thing to run on a lent GPU: the paper's recipe (``experiment=densenet121``, 224 px,
batch 16, every other value as shipped) trains one short epoch from the prepared cache of a
64-image synthetic release, the test evaluation of its best checkpoint runs (bootstrap CIs,
subgroups), then ``predict`` reads four images with that checkpoint. Only
``model.pretrained=false`` (nothing is downloaded) and ``trainer.max_epochs=1`` are changed.
It prints, per stage, its time and what ran where (device, precision, data path), and exits
non-zero when a stage fails. ``--device cpu`` runs the same with ``trainer=cpu`` (the slow tier of
the tests runs it so).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from chexnet_pl.command_runner import config_dir
from chexnet_pl.data.prepare import build_cache
from chexnet_pl.data.synthetic import generate_synthetic_nih

log = logging.getLogger("gpu_smoke")
IMAGES = 64
TARGET_S = 120  # on a GPU; a 2-core CPU takes a few minutes


def _compose(config: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose(config, overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def release(out: Path) -> Path:
    """64 synthetic NIH-format images at the recipe's 224 px, and their prepared cache."""
    root = out / "nih64"
    shutil.rmtree(root, ignore_errors=True)
    per_patient = 2
    generate_synthetic_nih(root, num_patients=IMAGES // per_patient, images_per_patient=per_patient,
                           image_size=224, prevalence=0.2, seed=0)  # fmt: skip
    build_cache(root, 224, workers=2, progress=False)
    return root


def smoke(device: str, out: Path) -> int:
    """Run the stages; 0 when all passed."""
    from chexnet_pl.predict import predict
    from chexnet_pl.train import train

    for name in ("chexnet_pl", "gpu_smoke"):
        logging.getLogger(name).setLevel(logging.INFO)
    started = time.perf_counter()
    stages: list[tuple[str, float, str]] = []

    mark = time.perf_counter()
    root = release(out)
    stages.append(("release + prepare", time.perf_counter() - mark, f"{IMAGES} images, 224 px"))

    mark = time.perf_counter()
    trainer = "gpu" if device == "cuda" else "cpu"
    run = out / "train"
    shutil.rmtree(run, ignore_errors=True)
    cfg = _compose("train", [
        "experiment=densenet121", f"trainer={trainer}", f"data.root={root}",
        "model.pretrained=false", "trainer.max_epochs=1", f"paths.output_dir={run}",
    ])  # fmt: skip
    metrics, objects = train(cfg)
    fitted = objects["trainer"]
    where = (
        f"{type(fitted.accelerator).__name__}, precision {fitted.precision}, "
        f"data path {objects['datamodule'].loader_kind}, {fitted.global_step} steps"
    )
    stages.append(("train 1 epoch + test evaluation", time.perf_counter() - mark, where))
    if "test/auroc" not in metrics or not (run / "aucs.csv").is_file():
        log.error("the test evaluation did not run: %s", sorted(metrics))
        return 1

    mark = time.perf_counter()
    images = out / "xrays"
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir()
    for png in sorted((root / "images").glob("*.png"))[:4]:
        shutil.copy(png, images / png.name)
    best = run / "checkpoints" / "best.ckpt"
    predicted = predict(_compose("predict", [
        f"ckpt={best}", f"images={images}", f"out={out / 'predict'}",
        f"paths.output_dir={out / 'predict'}",
    ]))  # fmt: skip
    rows = sum(1 for _ in (predicted / "predictions.csv").open()) - 1
    stages.append(("predict", time.perf_counter() - mark, f"{rows} images → {predicted}"))

    total = time.perf_counter() - started
    print(f"\n{'stage':<34}{'s':>7}  what ran")
    for name, seconds, what in stages:
        print(f"{name:<34}{seconds:>7.1f}  {what}")
    print(f"{'total':<34}{total:>7.1f}  (target on a GPU: < {TARGET_S} s); test mean AUROC "
          f"{metrics['test/auroc']:.3f}")  # fmt: skip
    return 0 if rows == 4 else 1
