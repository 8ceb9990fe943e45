"""A local web page and HTTP API that read chest X-rays with a trained checkpoint.

python -m chexnet_pl.serve ckpt=best.ckpt [port=8000] [host=127.0.0.1] [backend=torch|onnx]
    [save_uploads=folder] [max_upload_mb=50]
"""

from __future__ import annotations

import ipaddress
import logging

import hydra
import uvicorn
from omegaconf import DictConfig

from chexnet_pl.cli import CONFIG_PATH, run_or_exit
from chexnet_pl.serving.app import Limits, create_app
from chexnet_pl.serving.backends import load_backend
from chexnet_pl.serving.predictor import Predictor
from chexnet_pl.serving.served_model import ServingError

log = logging.getLogger(__name__)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(cfg: DictConfig) -> None:
    """Load the model once, then serve until interrupted."""
    if float(cfg.max_upload_mb) <= 0 or int(cfg.max_pixels) <= 0 or int(cfg.max_batch) < 1:
        raise ServingError(
            f"max_upload_mb={cfg.max_upload_mb}, max_pixels={cfg.max_pixels}, "
            f"max_batch={cfg.max_batch}: each must be positive"
        )
    backend, card = load_backend(
        cfg.ckpt, str(cfg.backend), cfg.onnx, cfg.image_size, cfg.thresholds
    )
    predictor = Predictor(backend, card, max_batch=int(cfg.max_batch))
    limits = Limits(
        max_upload_bytes=int(float(cfg.max_upload_mb) * 2**20), max_pixels=int(cfg.max_pixels)
    )
    app = create_app(predictor, limits, cfg.save_uploads)
    if not _is_loopback(str(cfg.host)):
        log.warning(
            "host=%s: the service is reachable from other machines, without authentication",
            cfg.host,
        )
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
