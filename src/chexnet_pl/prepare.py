"""Decode every image once into the pre-resized cache that training reads (``data.cache``).

chexnet-prepare root=/data/nih size=256 [workers=16] [cache_dir=/fast/disk]
(or python -m chexnet_pl.prepare ...); settings: conf/prepare.yaml.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from chexnet_pl.cli import CONFIG_PATH, run_or_exit
from chexnet_pl.data.prepare import build_cache


def prepare(cfg: DictConfig) -> Path:
    return build_cache(
        cfg.root,
        size=int(cfg.size),
        cache_dir=cfg.cache_dir,
        workers=cfg.workers,
        chunk_size=int(cfg.chunk_size),
        force=bool(cfg.force),
        progress=bool(cfg.progress),
        max_pixels=cfg.max_pixels,
    )


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="prepare")
def main(cfg: DictConfig) -> None:
    run_or_exit(prepare, cfg)


if __name__ == "__main__":
    main()
