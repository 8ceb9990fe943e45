"""Decode every image under root once into the pre-resized, memory-mapped uint8 cache that
training reads instead of the PNGs (data.cache=auto): <cache_dir>/<size>px/. Resumable; a rerun
on an up-to-date cache does nothing.

  chexnet-prepare root=/data/nih size=224
  chexnet-prepare root=/data/nih size=256 workers=16 cache_dir=/fast/disk/nih
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import hydra
from omegaconf import DictConfig

from chexnet_pl.command_runner import CONFIG_PATH, log_outputs, run_command, run_or_exit
from chexnet_pl.validation import Problems

MIN_SIZE = 8  # px: smaller caches cannot hold a usable chest X-ray


@dataclass(frozen=True)
class PrepareSettings:
    """conf/prepare.yaml, judged before any image is read."""

    root: str
    size: int
    cache_dir: str | None
    workers: int | None
    chunk_size: int
    force: bool
    progress: bool
    max_pixels: int | None  # conf/decode/default.yaml

    def __post_init__(self) -> None:
        problems = Problems()
        problems.path("root", self.root, "folder", optional=False)
        problems.number("size", self.size, minimum=MIN_SIZE, integer=True)
        problems.text("cache_dir", self.cache_dir, optional=True)
        problems.number("workers", self.workers, minimum=1, integer=True, optional=True)
        problems.number("chunk_size", self.chunk_size, minimum=1, integer=True)
        problems.flag("force", self.force)
        problems.flag("progress", self.progress)
        problems.number("max_pixels", self.max_pixels, minimum=1, integer=True, optional=True)
        problems.raise_if_any()


def check_config(cfg: DictConfig) -> PrepareSettings:
    from chexnet_pl.settings import command_settings

    return command_settings(PrepareSettings, cfg)


def prepare(cfg: DictConfig) -> Path:
    from chexnet_pl.data.prepare import build_cache

    settings = check_config(cfg)
    return build_cache(
        settings.root,
        size=settings.size,
        cache_dir=settings.cache_dir,
        workers=settings.workers,
        chunk_size=settings.chunk_size,
        force=settings.force,
        progress=settings.progress,
        max_pixels=settings.max_pixels,
    )


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="prepare")
def hydra_main(cfg: DictConfig) -> None:
    folder = Path(run_or_exit(prepare, cfg))
    log_outputs(folder, ["manifest.json", "images.u8", "index.csv"], label="image cache in")


def main() -> None:
    run_command("prepare", hydra_main, check=check_config, doc=__doc__)


if __name__ == "__main__":
    main()
