"""Export a checkpoint as it is served: uint8 N×1×H×W in, probabilities (and CAMs) out.

python -m chexnet_pl.export ckpt=best.ckpt format=onnx|torchscript [image_size=224] [out=...] [cams=true]
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from chexnet_pl.cli import CONFIG_PATH, run_or_exit
from chexnet_pl.serving.export import export_checkpoint


def export(cfg: DictConfig) -> Path:
    """Write the exported model and its ``<file>.json`` sidecar; returns the model file."""
    return export_checkpoint(
        cfg.ckpt,
        fmt=str(cfg.format),
        image_size=cfg.image_size,
        out=cfg.out,
        cams=bool(cfg.cams),
        thresholds=cfg.thresholds,
    )


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="export")
def main(cfg: DictConfig) -> None:
    run_or_exit(export, cfg)


if __name__ == "__main__":
    main()
