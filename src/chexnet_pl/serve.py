"""A local web page and HTTP API that read chest X-rays with a trained checkpoint.

python -m chexnet_pl.serve ckpt=best.ckpt [port=8000] [host=127.0.0.1] [backend=torch|onnx]
    [save_uploads=folder] [max_upload_mb=50] [calibration=calibration.json] [allowed_hosts=[name]]
"""

from __future__ import annotations

import logging

import hydra
import uvicorn
from omegaconf import DictConfig

from chexnet_pl.cli import CONFIG_PATH, run_or_exit
from chexnet_pl.serving.app import Limits, create_app
from chexnet_pl.serving.backends import load_backend
from chexnet_pl.serving.hosts import allowed_host_names, is_loopback
from chexnet_pl.serving.predictor import Predictor

log = logging.getLogger(__name__)


def serve(cfg: DictConfig) -> None:
    """Load the model once, then serve until interrupted."""
    limits = Limits.from_settings(cfg.max_upload_mb, cfg.max_pixels)  # checked before the model
    hosts = allowed_host_names(str(cfg.host), cfg.allowed_hosts)
    backend, card = load_backend(
        cfg.ckpt, str(cfg.backend), cfg.onnx, cfg.image_size, cfg.thresholds, cfg.calibration
    )
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
def main(cfg: DictConfig) -> None:
    run_or_exit(serve, cfg)


if __name__ == "__main__":
    main()
