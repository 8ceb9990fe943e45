"""Training augmentation for a whole batch: horizontal flip + affine (scale, translate, rotate).

The same distribution as ``transforms.train_transform`` (albumentations): a flip with
probability ``hflip``, then with probability ``affine`` an ``A.Affine`` with independent x/y
scales in ``scale``, x/y shifts of ``±translate`` of the size (whole pixels, as albumentations
rounds them), a rotation in ``±rotate`` degrees about the image centre, bilinear, zero border.
Parameters are drawn per sample on the host from a seeded NumPy generator, so a run is
reproducible and the same on any device; the warp runs where the images are:

- CUDA tensors: one ``affine_grid`` + ``grid_sample`` for the batch (flip folded into the matrix);
- CPU tensors: OpenCV per image (``cv2.flip`` + ``cv2.warpAffine``, albumentations' own calls,
  so pixels match it exactly). Batched grids on a CPU are several times slower
  (``benchmarks/speed.py`` prints both).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

WARPS = ("auto", "opencv", "grid")


@dataclass(frozen=True)
class AffineParams:
    """Per-sample parameters of one batch (arrays of length N)."""

    flip: np.ndarray  # bool
    apply: np.ndarray  # bool: the affine step runs
    scale_x: np.ndarray
    scale_y: np.ndarray
    shift_x: np.ndarray  # whole pixels
    shift_y: np.ndarray
    angle: np.ndarray  # degrees


def affine_matrix(
    size: int, scale_x: float, scale_y: float, shift_x: float, shift_y: float, angle: float
) -> np.ndarray:
    """albumentations' 3x3 forward matrix (``create_affine_transformation_matrix``, no shear):
    about the centre ``(size/2 - 0.5)``, scale, then rotate, then shift."""
    centre = size / 2 - 0.5
    to_origin = np.array([[1, 0, -centre], [0, 1, -centre], [0, 0, 1]], dtype=np.float64)
    scale = np.diag([scale_x, scale_y, 1.0])
    rad = np.deg2rad(angle % 360)
    rotate = np.array(
        [[np.cos(rad), np.sin(rad), 0], [-np.sin(rad), np.cos(rad), 0], [0, 0, 1]],
        dtype=np.float64,
    )
    back = np.array([[1, 0, centre + shift_x], [0, 1, centre + shift_y], [0, 0, 1]])
    return back @ rotate @ scale @ to_origin


class BatchAugment:
    """Flip + affine for ``N x H x W`` uint8 batches; ``warp``: auto (grid on CUDA, OpenCV on a
    CPU), opencv or grid."""

    def __init__(
        self,
        hflip: float,
        affine: float,
        scale: Sequence[float],
        translate: float,
        rotate: float,
        warp: str = "auto",
    ) -> None:
        if warp not in WARPS:
            raise ValueError(f"warp={warp!r}; use one of {WARPS}")
        self.hflip, self.affine = float(hflip), float(affine)
        self.scale = (float(scale[0]), float(scale[1]))
        self.translate, self.rotate, self.warp = float(translate), float(rotate), warp

    def sample(self, count: int, size: int, rng: np.random.Generator) -> AffineParams:
        """Parameters for ``count`` images of ``size`` px, in albumentations' ranges."""
        flip = rng.random(count) < self.hflip
        apply = rng.random(count) < self.affine
        scale_x = rng.uniform(*self.scale, count)
        scale_y = rng.uniform(*self.scale, count)
        # albumentations: int(uniform(-t, t) * size), i.e. truncated towards zero
        shift_x = np.trunc(rng.uniform(-self.translate, self.translate, count) * size)
        shift_y = np.trunc(rng.uniform(-self.translate, self.translate, count) * size)
        angle = rng.uniform(-self.rotate, self.rotate, count)
        return AffineParams(flip, apply, scale_x, scale_y, shift_x, shift_y, angle)

    def __call__(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Augmented copy of ``images`` (``N x H x W`` uint8, square)."""
        params = self.sample(len(images), images.shape[-1], rng)
        warp = choose_warp(self.warp, images.device.type)
        return warp_opencv(images, params) if warp == "opencv" else warp_grid(images, params)


def choose_warp(setting: str, device_type: str) -> str:
    """``auto``: one batched ``grid_sample`` where the images are on a GPU, OpenCV per image on
    a CPU (batched grids are several times slower there)."""
    if setting != "auto":
        return setting
    return "opencv" if device_type == "cpu" else "grid"


def _matrices(params: AffineParams, size: int) -> list[np.ndarray]:
    return [
        affine_matrix(
            size,
            params.scale_x[i],
            params.scale_y[i],
            params.shift_x[i],
            params.shift_y[i],
            params.angle[i],
        )  # fmt: skip
        for i in range(len(params.flip))
    ]


def warp_opencv(images: torch.Tensor, params: AffineParams) -> torch.Tensor:
    """Per image, albumentations' own operations: ``cv2.flip``, then ``cv2.warpAffine``."""
    array = images.numpy()
    out = np.empty_like(array)
    size = array.shape[-1]
    for i, matrix in enumerate(_matrices(params, size)):
        image = cv2.flip(array[i], 1) if params.flip[i] else array[i]
        if params.apply[i]:
            image = cv2.warpAffine(
                image, matrix[:2], (size, size), flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT, borderValue=0,
            )  # fmt: skip
        out[i] = image
    return torch.from_numpy(out)


def warp_grid(images: torch.Tensor, params: AffineParams) -> torch.Tensor:
    """The whole batch in one ``grid_sample``: each output pixel reads the input at the inverse
    of (affine ∘ flip), in normalised coordinates (``align_corners=False``: pixel centres)."""
    count, height, width = images.shape
    flip = np.array([[-1, 0, width - 1], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
    identity = np.eye(3)
    pixel_to_norm = np.array(
        [[2 / width, 0, 1 / width - 1], [0, 2 / height, 1 / height - 1], [0, 0, 1]]
    )
    norm_to_pixel = np.linalg.inv(pixel_to_norm)
    thetas = np.empty((count, 2, 3), dtype=np.float32)
    for i, matrix in enumerate(_matrices(params, width)):
        forward = (matrix if params.apply[i] else identity) @ (flip if params.flip[i] else identity)
        thetas[i] = (pixel_to_norm @ np.linalg.inv(forward) @ norm_to_pixel)[:2]
    theta = torch.from_numpy(thetas)
    if images.device.type == "cuda":
        theta = theta.pin_memory().to(images.device, non_blocking=True)
    batch = images.unsqueeze(1).float()
    grid = F.affine_grid(theta, [count, 1, height, width], align_corners=False)
    warped = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped.squeeze(1).round_().clamp_(0, 255).to(torch.uint8)
