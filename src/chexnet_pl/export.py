"""Export a trained checkpoint as the model is served (uint8 gray images in, probabilities and,
with cams=true, class activation maps out) to ONNX or TorchScript, or its network's weights to
safetensors (read back with no pickle), checked against PyTorch before it is written, with a JSON
sidecar (classes, preprocessing, thresholds, SHA-256) and MODEL_CARD.md beside it.

  chexnet-export ckpt=outputs/train/2026-12-01/09-30-00/checkpoints/best.ckpt format=onnx cams=true
  chexnet-export ckpt=best.ckpt format=torchscript image_size=224 out=model.pt
  chexnet-export ckpt=best.ckpt format=safetensors
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import hydra
from omegaconf import DictConfig

from chexnet_pl.command_runner import CONFIG_PATH, log_outputs, run_command, run_or_exit
from chexnet_pl.validation import Problems


@dataclass(frozen=True)
class ExportSettings:
    """conf/export.yaml, judged before the checkpoint is read."""

    ckpt: str
    format: str
    image_size: int | None
    out: str | None
    cams: bool
    thresholds: str | None
    conformal: str | None

    def __post_init__(self) -> None:
        from chexnet_pl.serving.export import FORMATS

        problems = Problems()
        problems.path("ckpt", self.ckpt, optional=False)
        problems.choice("format", self.format, FORMATS)
        problems.number("image_size", self.image_size, minimum=1, integer=True, optional=True)
        problems.text("out", self.out, optional=True)
        problems.flag("cams", self.cams)
        problems.path("thresholds", self.thresholds)
        problems.path("conformal", self.conformal)
        problems.raise_if_any()


def check_config(cfg: DictConfig) -> ExportSettings:
    from chexnet_pl.settings import command_settings

    return command_settings(ExportSettings, cfg)


def export(cfg: DictConfig) -> Path:
    """Write the exported model and its ``<file>.json`` sidecar; returns the model file."""
    from chexnet_pl.serving.export import export_checkpoint

    settings = check_config(cfg)
    return export_checkpoint(
        settings.ckpt,
        fmt=settings.format,
        image_size=settings.image_size,
        out=settings.out,
        cams=settings.cams,
        thresholds=settings.thresholds,
        conformal=settings.conformal,
    )


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="export")
def hydra_main(cfg: DictConfig) -> None:
    path = Path(run_or_exit(export, cfg))
    log_outputs(path.parent, [path.name, f"{path.name}.json", "MODEL_CARD.md"])


def main() -> None:
    run_command("export", hydra_main, check=check_config, doc=__doc__)


if __name__ == "__main__":
    main()
