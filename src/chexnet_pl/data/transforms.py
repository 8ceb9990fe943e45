"""Albumentations pipelines on HxW uint8 grayscale: resize, then augment (training only).

Normalisation is not here: it travels with the model (``models.backbones.InputNormalizer``),
so batches stay uint8 until they reach the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np

from chexnet_pl.data.resize import area_resize

__all__ = ["AreaResize", "area_resize", "eval_transform", "train_transform"]


class AreaResize(A.ImageOnlyTransform):
    """``area_resize`` as an albumentations step (the first of every pipeline here)."""

    def __init__(self, size: int) -> None:
        super().__init__(p=1.0)
        self.size = int(size)

    def apply(self, img: np.ndarray, **params) -> np.ndarray:
        return area_resize(img, self.size)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("size",)


def eval_transform(image_size: int) -> A.Compose:
    """Deterministic: area-resize to a square ``image_size``."""
    return A.Compose([AreaResize(image_size)])


def train_transform(
    image_size: int,
    hflip: float,
    affine: float,
    scale: Sequence[float],
    translate: float,
    rotate: float,
) -> A.Compose:
    """Resize, random horizontal flip, and a small random affine (scale, shift, rotation):
    ``data.augment`` (conf/data/nih.yaml, where its values are)."""
    steps = [AreaResize(image_size)]
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
