"""Albumentations pipelines on HxW uint8 grayscale: resize, then augment (training only).

Normalisation is not here: it travels with the model (``models.backbones.InputNormalizer``),
so batches stay uint8 until they reach the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2


def eval_transform(image_size: int) -> A.Compose:
    """Deterministic: area-resize to a square ``image_size``."""
    return A.Compose([A.Resize(image_size, image_size, interpolation=cv2.INTER_AREA)])


def train_transform(
    image_size: int,
    hflip: float = 0.5,
    affine: float = 0.5,
    scale: Sequence[float] = (0.95, 1.05),
    translate: float = 0.05,
    rotate: float = 7.0,
) -> A.Compose:
    """Resize, random horizontal flip, and a small random affine (scale, shift, rotation)."""
    steps = [A.Resize(image_size, image_size, interpolation=cv2.INTER_AREA)]
    if hflip > 0:
        steps.append(A.HorizontalFlip(p=hflip))
    if affine > 0:
        steps.append(
            A.Affine(
                scale=tuple(scale),
                translate_percent=(-translate, translate),
                rotate=(-rotate, rotate),
                border_mode=cv2.BORDER_CONSTANT,
                p=affine,
            )
        )
    return A.Compose(steps)
