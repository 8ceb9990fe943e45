"""Download NIH ChestX-ray14 as released (12 image archives + metadata), resumable.

chexnet-download root=/data/nih [only=images_001.tar.gz] [keep_archives=true]
(or python -m chexnet_pl.download ...); settings: conf/download.yaml.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from chexnet_pl.cli import CONFIG_PATH, run_or_exit
from chexnet_pl.data.download import download_nih


def download(cfg: DictConfig) -> dict:
    return download_nih(
        cfg.root,
        dict(cfg.archives),
        {key: dict(entry) for key, entry in cfg.metadata.items()},
        checksums=dict(cfg.checksums or {}),
        only=[cfg.only] if isinstance(cfg.only, str) else (list(cfg.only) if cfg.only else None),
        keep_archives=bool(cfg.keep_archives),
        retries=int(cfg.retries),
        timeout_s=float(cfg.timeout_s),
        backoff_s=float(cfg.backoff_s),
        progress=bool(cfg.progress),
    )


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="download")
def main(cfg: DictConfig) -> None:
    run_or_exit(download, cfg)


if __name__ == "__main__":
    main()
