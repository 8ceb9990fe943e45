"""Device-resident data: a split's prepared images copied once to the training device.

With the images, labels and shuffled indices on the GPU, a batch is an ``index_select`` and one
augmentation pass there: no DataLoader workers, no inter-process copies, nothing for the host
to wait on. The same code runs with CPU tensors (no IPC either; augmentation per image with
OpenCV). Batches are the dicts the DataLoader path yields: ``img`` (N x 1 x H x W uint8),
``lab`` (float32), ``idx`` (row in the split), ``name`` (list of image names).

Each epoch's order and augmentation draw from generators seeded by (run seed, epoch), so a run
resumed from a checkpoint sees exactly the batches an uninterrupted run would have.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from chexnet_pl.data.batch_augment import BatchAugment
from chexnet_pl.data.cache import ImageCache
from chexnet_pl.data.transforms import area_resize
from chexnet_pl.device import free_memory
from chexnet_pl.errors import DataError

log = logging.getLogger(__name__)

LOADERS = ("auto", "workers", "device")
CHUNK_ROWS = 4096  # rows read, resized and copied per step while loading a split


@dataclass
class DeviceImages:
    """One split's images (``N x S x S`` uint8), labels and names, on ``images.device``."""

    images: torch.Tensor
    labels: torch.Tensor
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)


MAX_AUTO_WORKERS = 16


def resolve_num_workers(setting: int | str) -> int:
    """``data.num_workers``: a count (capped at the usable cores), or auto: cores − 1, at most
    ``MAX_AUTO_WORKERS`` (the main process needs a core to drive the device)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    if setting == "auto":
        return max(0, min(cores - 1, MAX_AUTO_WORKERS))
    try:
        return min(int(setting), cores)
    except (TypeError, ValueError):
        raise ValueError(f"data.num_workers={setting!r}; use a number or auto") from None


def workers_for(requested: int | str) -> int:
    """``data.num_workers`` (judged by the data settings' check): ``auto`` or a count, capped at
    this machine's cores (said when it is)."""
    workers = resolve_num_workers(requested)
    if requested != "auto" and workers < int(requested):
        log.info("data.num_workers=%s capped at this machine's %d CPU cores", requested, workers)
    return workers


def _size(count: int) -> str:
    return f"{count / 1e9:.2f} GB" if count >= 1e8 else f"{count / 1e6:.1f} MB"


def bytes_needed(rows: int, image_size: int, classes: int) -> int:
    return rows * (image_size * image_size + 4 * classes)


def choose_loader(
    mode: str,
    has_cache: bool,
    needed: int,
    device: torch.device,
    share: float,
    world_size: int,
    available: int,
) -> tuple[str, str]:
    """``(workers | device, why)`` for ``data.loader=mode`` when ``available`` bytes are free on
    ``device`` (``device.free_memory``); raises ValueError for an explicit ``device`` that
    cannot work (the caller words the error)."""
    if mode == "workers":
        return "workers", "data.loader=workers"
    problems = []
    if not has_cache:
        problems.append("no valid prepared cache of at least data.image_size")
    if world_size > 1:
        problems.append(f"{world_size} processes (the device path runs on one device)")
    if needed > share * available:
        problems.append(
            f"the images need {_size(needed)}, more than data.device_memory_share={share} "
            f"of the {_size(available)} free on {device}"
        )
    if not problems:
        return "device", (
            f"{_size(needed)} of prepared images fit in {share:.0%} of the "
            f"{_size(available)} free on {device}"
        )
    if mode == "device":
        raise ValueError("; ".join(problems))
    return "workers", "; ".join(problems)


def pick_loader(
    mode: str,
    has_cache: bool,
    rows: int,
    image_size: int,
    classes: int,
    device: torch.device,
    share: float,
    world_size: int,
    build: str,
) -> str:
    """``choose_loader`` for ``rows`` images of ``image_size`` px with ``classes`` labels, on
    ``device``'s free memory now; said in the log. An explicit ``data.loader=device`` that cannot
    work is a DataError naming ``build``, the command that prepares the cache it needs."""
    needed = bytes_needed(rows, image_size, classes)
    try:
        kind, why = choose_loader(
            mode, has_cache, needed, device, share, world_size, free_memory(device)
        )
    except ValueError as exc:
        raise DataError(
            f"data.loader=device cannot be used: {exc}. Use data.loader=workers (or auto), or "
            f"prepare a cache with: {build}"
        ) from exc
    log.info("data loading: %s (%s)", kind, why)
    return kind


def load_split(
    cache: ImageCache,
    rows: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    image_size: int,
    device: torch.device,
) -> DeviceImages:
    """Copy ``rows`` of the cache to ``device`` once, area-resized to ``image_size`` (the same
    resize as the DataLoader path, so the pixels are the same)."""
    images = torch.empty((len(rows), image_size, image_size), dtype=torch.uint8, device=device)
    resize = cache.size != image_size
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for start in range(0, len(rows), CHUNK_ROWS):
            chunk = np.asarray(rows[start : start + CHUNK_ROWS])
            block = cache.array[np.sort(chunk)] if len(chunk) else cache.array[:0]
            # memmap fancy indexing wants sorted rows for speed; put them back in split order
            block = block[np.argsort(np.argsort(chunk))]
            if resize:
                block = np.stack(list(pool.map(lambda im: area_resize(im, image_size), block)))
            images[start : start + len(chunk)].copy_(torch.from_numpy(np.ascontiguousarray(block)))
    return DeviceImages(
        images, torch.as_tensor(labels, dtype=torch.float32).to(device), list(names)
    )


class EpochOrder:
    """The sampler Lightning sees: ``set_epoch`` (called by the fit loop) picks the epoch whose
    order and augmentation are drawn next, seeded from (seed, epoch)."""

    def __init__(self, size: int, seed: int, shuffle: bool) -> None:
        self.size, self.seed, self.shuffle = size, int(seed), shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def generators(self) -> tuple[torch.Generator, np.random.Generator]:
        state = np.random.SeedSequence([self.seed, self.epoch]).generate_state(2)
        return torch.Generator().manual_seed(int(state[0])), np.random.default_rng(int(state[1]))

    def order(self, generator: torch.Generator) -> torch.Tensor:
        if self.shuffle:
            return torch.randperm(self.size, generator=generator)
        return torch.arange(self.size)


class DeviceLoader:
    """Iterable of dict batches over a ``DeviceImages`` (an iterable with ``len`` is all that
    Lightning needs of a data loader)."""

    batch_sampler = None  # what Lightning inspects on loaders; ``sampler`` gets ``set_epoch``

    def __init__(
        self,
        data: DeviceImages,
        batch_size: int,
        shuffle: bool,
        seed: int,
        augment: BatchAugment | None = None,
        drop_last: bool = False,
    ) -> None:
        self.data = data
        self.batch_size = int(batch_size)
        self.drop_last = drop_last
        self.augment = augment
        self.sampler = EpochOrder(len(data), seed, shuffle)
        on_cpu = data.images.device.type == "cpu"
        # NumPy views of CPU-resident data: its gather is single-threaded, while torch's parallel
        # one leaves OpenMP threads spinning against OpenCV's warps (~800 vs ~7,000 img/s).
        self._host = (data.images.numpy(), data.labels.numpy()) if on_cpu else None

    def __len__(self) -> int:
        count = len(self.data) / self.batch_size
        return int(count) if self.drop_last else math.ceil(count)

    def __iter__(self) -> Iterator[dict]:
        order_generator, augment_rng = self.sampler.generators()
        order = self.sampler.order(order_generator)
        on_device = order.to(self.data.images.device)
        host_order = order.numpy()  # names are looked up on the host: no device read per batch
        for index in range(len(self)):
            start = index * self.batch_size
            host_rows = host_order[start : start + self.batch_size]
            if self._host is not None:
                rows = torch.from_numpy(host_rows)
                images = torch.from_numpy(self._host[0][host_rows])
                labels = torch.from_numpy(self._host[1][host_rows])
            else:
                rows = on_device[start : start + self.batch_size]
                images = self.data.images.index_select(0, rows)
                labels = self.data.labels.index_select(0, rows)
            if self.augment is not None:
                images = self.augment(images, augment_rng)
            yield {
                "img": images.unsqueeze(1),
                "lab": labels,
                "idx": rows,
                "name": [self.data.names[i] for i in host_rows],
            }
