"""A synthetic dataset in NIH's exact on-disk format, for the demo and the tests.

Each finding is a lesion of its own shape and size drawn at its own place (with jitter) on a
chest-like background, so the signal is learnable and localised: the lesion boxes are written
to ``BBox_List_2017.csv`` like NIH's radiologist boxes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from chexnet_pl.data.nih_table import FINDINGS
from chexnet_pl.files import write_text_atomic
from chexnet_pl.label_sets import NO_FINDING

log = logging.getLogger(__name__)

SHAPES = ("disk", "ring", "square", "hbar", "vbar", "cross", "diamond")
MARKER = ".synthetic.json"

# Lesion centres (x, y as fractions of the width/height) all on the image's left half, so a
# horizontal flip never moves one finding's lesion onto another finding's place.
_COLUMNS = (0.14, 0.28, 0.42)
_ROWS = (0.16, 0.33, 0.5, 0.67, 0.84)
LESION_CENTRES = {finding: (_COLUMNS[i % 3], _ROWS[i // 3]) for i, finding in enumerate(FINDINGS)}


def _lesion_mask(shape: str, radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    r = np.hypot(xx, yy)
    thin = max(1, radius // 3)
    masks = {
        "disk": r <= radius,
        "ring": (r <= radius) & (r >= radius - thin),
        "square": np.ones_like(r, dtype=bool),
        "hbar": np.abs(yy) <= thin,
        "vbar": np.abs(xx) <= thin,
        "cross": (np.abs(yy) <= thin) | (np.abs(xx) <= thin),
        "diamond": np.abs(xx) + np.abs(yy) <= radius,
    }
    return masks[shape]


def lesion_box(
    finding: str,
    image_size: int,
    jitter: tuple[float, float] = (0.0, 0.0),
    lesion_scale: float = 1.0,
) -> tuple:
    """(x, y, w, h) in pixels of a finding's lesion, as in ``BBox_List_2017.csv``."""
    index = FINDINGS.index(finding)
    radius = int(round(image_size * (0.045 if index < 7 else 0.065) * lesion_scale))
    cx = int(round((LESION_CENTRES[finding][0] + jitter[0]) * image_size))
    cy = int(round((LESION_CENTRES[finding][1] + jitter[1]) * image_size))
    return cx - radius, cy - radius, 2 * radius + 1, 2 * radius + 1


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = 40 + 30 * yy + rng.normal(0, 6, (size, size))
    for cx in (0.3, 0.7):  # two brighter "lung fields"
        inside = ((xx - cx) / 0.17) ** 2 + ((yy - 0.5) / 0.36) ** 2 <= 1
        image[inside] += 35
    return image


def _render(
    size: int, findings: list[str], rng: np.random.Generator, lesion_scale: float = 1.0
) -> tuple[np.ndarray, list]:
    image = _background(size, rng)
    boxes = []
    for finding in findings:
        jitter = tuple(rng.uniform(-0.03, 0.03, 2))
        x, y, w, h = lesion_box(finding, size, jitter, lesion_scale)
        x, y = min(max(x, 0), size - w), min(max(y, 0), size - h)
        shape = SHAPES[FINDINGS.index(finding) % len(SHAPES)]
        mask = _lesion_mask(shape, (w - 1) // 2)
        image[y : y + h, x : x + w][mask] += 110
        boxes.append((finding, x, y, w, h))
    return np.clip(image, 0, 255).astype(np.uint8), boxes


def generate_synthetic_nih(
    root: str | Path,
    num_patients: int = 400,
    images_per_patient: int = 3,
    image_size: int = 128,
    prevalence: float = 0.12,
    test_fraction: float = 0.2,
    seed: int = 0,
    lesion_scale: float = 1.0,
) -> Path:
    """Write CSV (v2020 columns), PNGs under ``images/``, split lists and a box list into ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows, box_rows = [], []
    patients = np.arange(1, num_patients + 1)
    test_patients = set(
        rng.permutation(patients)[: int(round(num_patients * test_fraction))].tolist()
    )
    train_val, test = [], []
    for patient in patients:
        for follow_up in range(images_per_patient):
            name = f"{patient:08d}_{follow_up:03d}.png"
            present = [f for f in FINDINGS if rng.random() < prevalence]
            image, boxes = _render(image_size, present, rng, lesion_scale)
            Image.fromarray(image, mode="L").save(root / "images" / name)
            rows.append(
                {
                    "Image Index": name,
                    "Finding Labels": "|".join(present) if present else NO_FINDING,
                    "Follow-up #": follow_up,
                    "Patient ID": int(patient),
                    "Patient Age": int(rng.integers(20, 80)),
                    "Patient Gender": "M" if rng.random() < 0.5 else "F",
                    "View Position": "PA" if rng.random() < 0.6 else "AP",
                    "OriginalImage[Width": image_size,
                    "Height]": image_size,
                    "OriginalImagePixelSpacing[x": 0.143,
                    "y]": 0.143,
                }
            )
            box_rows += [
                (name, f if f != "Infiltration" else "Infiltrate", x, y, w, h)
                for f, x, y, w, h in boxes
            ]
            (test if patient in test_patients else train_val).append(name)
    pd.DataFrame(rows).to_csv(root / "Data_Entry_2017_v2020.csv", index=False)
    boxes = pd.DataFrame(
        box_rows, columns=["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"]
    )
    boxes.to_csv(root / "BBox_List_2017.csv", index=False)
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    log.info("wrote %d synthetic images of %d patients to %s", len(rows), num_patients, root)
    return root


def ensure_synthetic_nih(root: str | Path, **params) -> Path:
    """Generate into ``root`` unless it already holds a complete dataset made with these params."""
    root = Path(root)
    marker = root / MARKER
    wanted = json.dumps(params, sort_keys=True)
    if marker.is_file() and marker.read_text() == wanted:
        return root
    if root.exists() and any(root.iterdir()) and not marker.is_file():
        raise FileExistsError(
            f"{root} exists and was not made by the synthetic generator; refusing to overwrite it. "
            "Choose another data.root for the demo."
        )
    # Build in a sibling folder and rename, so an interrupted run never leaves a half dataset.
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    generate_synthetic_nih(partial, **params)
    write_text_atomic(partial / MARKER, wanted)
    if root.exists():
        shutil.rmtree(root)
    os.replace(partial, root)
    return root
