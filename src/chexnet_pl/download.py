"""Download NIH ChestX-ray14 as released: its 12 image archives (about 42 GB), resumable, each
checked while it is extracted into root/images/, and the metadata files NIH links directly.

  chexnet-download root=/data/nih
  chexnet-download root=/data/nih only=[images_001,images_002] keep_archives=true
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import hydra
from omegaconf import DictConfig

from chexnet_pl.command_runner import CONFIG_PATH, run_command, run_or_exit
from chexnet_pl.validation import Problems


@dataclass(frozen=True)
class DownloadSettings:
    """conf/download.yaml, judged before anything is fetched."""

    root: str
    archives: Mapping[str, str]
    metadata: Mapping[str, Mapping[str, Any]]
    checksums: Mapping[str, str | None] | None  # null: no checksum for that file
    only: str | Sequence[str] | None
    keep_archives: bool
    retries: int
    timeout_s: float
    backoff_s: float
    progress: bool

    def __post_init__(self) -> None:
        problems = Problems()
        problems.text("root", self.root)
        for name, url in self.archives.items():
            problems.text(f"archives.{name}", url)
        for key, entry in self.metadata.items():
            nested = Problems(f"metadata.{key}")
            nested.unknown_keys(entry, ("file", "url"))
            nested.text("file", entry.get("file"))
            nested.text("url", entry.get("url"), optional=True)
            problems.messages += nested.messages
        for key, checksum in (self.checksums or {}).items():
            if checksum is not None:  # the shipped keys are null: a file without a checksum
                problems.choice("checksums", key, [*self.archives, *self.metadata])
        for name in [self.only] if isinstance(self.only, str) else (self.only or []):
            problems.choice("only[]", name, list(self.archives))
        problems.flag("keep_archives", self.keep_archives)
        problems.number("retries", self.retries, minimum=0, integer=True)
        problems.number("timeout_s", self.timeout_s, minimum=0, exclusive=True)
        problems.number("backoff_s", self.backoff_s, minimum=0)
        problems.flag("progress", self.progress)
        problems.raise_if_any()


def check_config(cfg: DictConfig) -> DownloadSettings:
    from chexnet_pl.settings import command_settings

    return command_settings(DownloadSettings, cfg)


def download(cfg: DictConfig) -> dict:
    from chexnet_pl.data.download import download_nih

    settings = check_config(cfg)
    only = settings.only
    return download_nih(
        settings.root,
        dict(settings.archives),
        {key: dict(entry) for key, entry in settings.metadata.items()},
        checksums={k: v for k, v in (settings.checksums or {}).items() if v is not None},
        only=[only] if isinstance(only, str) else (list(only) if only else None),
        keep_archives=settings.keep_archives,
        retries=settings.retries,
        timeout_s=float(settings.timeout_s),
        backoff_s=float(settings.backoff_s),
        progress=settings.progress,
    )


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="download")
def hydra_main(cfg: DictConfig) -> None:
    run_or_exit(download, cfg)


def main() -> None:
    run_command("download", hydra_main, check=check_config, doc=__doc__)


if __name__ == "__main__":
    main()
