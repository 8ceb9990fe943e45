"""Serve a trained checkpoint on a local web page and HTTP API (POST /predict, GET /model,
GET /health): drop an X-ray on the page for the prediction table and heat maps. It binds to
127.0.0.1 unless host= says otherwise, answers only requests addressed to this machine's loopback
names unless allowed_hosts= adds others, and keeps uploads in memory unless save_uploads= is given.

  chexnet-serve ckpt=outputs/train/2026-12-01/09-30-00/checkpoints/best.ckpt
  chexnet-serve ckpt=best.ckpt port=8080 backend=onnx save_uploads=kept/ max_upload_mb=20
  chexnet-serve ckpt=best.ckpt calibration=calibration.json thresholds=aucs.csv
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from chexnet_pl.command_runner import CONFIG_PATH, run_command, run_or_exit
from chexnet_pl.serving.settings import ServeSettings

log = logging.getLogger(__name__)


def check_config(cfg: DictConfig) -> ServeSettings:
    from chexnet_pl.settings import command_settings

    return command_settings(ServeSettings, cfg)


def serve(cfg: DictConfig) -> None:
    """Load the model once, then serve until interrupted."""
    import uvicorn

    from chexnet_pl.serving.app import Limits, create_app
    from chexnet_pl.serving.backends import load_backend
    from chexnet_pl.serving.hosts import allowed_host_names, is_loopback
    from chexnet_pl.serving.predictor import Predictor

    check_config(cfg)
    limits = Limits.from_settings(cfg.max_upload_mb, cfg.max_pixels)
    hosts = allowed_host_names(str(cfg.host), cfg.allowed_hosts)
    backend, card = load_backend(
        cfg.ckpt, str(cfg.backend), cfg.onnx, cfg.image_size, cfg.thresholds, cfg.calibration,
        cfg.conformal,
    )  # fmt: skip
    predictor = Predictor(backend, card, max_batch=int(cfg.max_batch))
    app = create_app(predictor, limits, cfg.save_uploads, hosts)
    if not is_loopback(str(cfg.host)):
        log.warning(
            "host=%s: the service is reachable from other machines, without authentication",
            cfg.host,
        )
    log.info("answering requests for host names: %s",
             ", ".join(sorted(hosts)) if hosts is not None else "any (allowed_hosts)")  # fmt: skip
    log.info(
        "serving %s (%s backend, heat maps: %s) on http://%s:%d/ ; uploads %s",
        card["backbone"], backend.name, card["heatmaps"], cfg.host, int(cfg.port),
        f"kept in {cfg.save_uploads}" if cfg.save_uploads else "stay in memory",
    )  # fmt: skip
    uvicorn.run(
        app,
        host=str(cfg.host),
        port=int(cfg.port),
        log_config=None,  # Hydra's logging: uvicorn's lines go to the run's log too
        access_log=bool(cfg.access_log),
    )


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="serve")
def hydra_main(cfg: DictConfig) -> None:
    run_or_exit(serve, cfg)


def main() -> None:
    run_command("serve", hydra_main, check=check_config, doc=__doc__)


if __name__ == "__main__":
    main()
