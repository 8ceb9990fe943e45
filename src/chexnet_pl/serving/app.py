"""The web service: a page to read one X-ray, and a JSON API.

``GET /``        the page (drop a PNG or JPEG; prediction table; heat-map overlay of any finding)
``POST /predict`` the image as the request body, or as the ``file`` field of a multipart form;
                 ``?overlay=none|top|all|<finding>`` adds base64 PNG overlays → JSON
``GET /health``  liveness and counters
``GET /model``   classes, image size, preprocessing, thresholds, checkpoint SHA-256, limits

Bad input is a 4xx with ``{"error": message}``; nothing a client sends makes a 500.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse

from chexnet_pl.serving.decode import DEFAULT_MAX_PIXELS, UploadError, decode_image, sniff_format
from chexnet_pl.serving.predictor import Predictor, overlay_png
from chexnet_pl.serving.served_model import ServingError
from chexnet_pl.serving.uploads import file_from_body, read_limited, save_upload

log = logging.getLogger(__name__)

NOT_A_MEDICAL_DEVICE = (
    "Research software: not a medical device, not for diagnosis or any clinical decision."
)


@dataclass
class Limits:
    max_upload_bytes: int = 50 * 2**20
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_overlay_side: int = 2048


@dataclass
class Counters:
    started: float
    predictions: int = 0
    client_errors: int = 0
    server_errors: int = 0


def page_html() -> str:
    return files("chexnet_pl.serving").joinpath("page.html").read_text(encoding="utf-8")


def create_app(
    predictor: Predictor, limits: Limits | None = None, save_uploads: str | Path | None = None
) -> FastAPI:
    """The FastAPI application around one loaded model."""
    limits = limits or Limits()
    uploads_dir = Path(save_uploads).expanduser() if save_uploads else None
    counters = Counters(started=time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        predictor.close()  # the model's worker thread ends with the server

    # No /docs or /redoc: their pages load Swagger UI from a CDN; /openapi.json stays.
    app = FastAPI(
        title="chexnet_pl", description=NOT_A_MEDICAL_DEVICE, lifespan=lifespan,
        docs_url=None, redoc_url=None,
    )  # fmt: skip
    page = page_html()

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, exc: UploadError) -> JSONResponse:
        counters.client_errors += 1
        log.info("%s %s → %d: %s", request.method, request.url.path, exc.status, exc)
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(ServingError)
    async def serving_error(request: Request, exc: ServingError) -> JSONResponse:
        counters.client_errors += 1
        return JSONResponse({"error": str(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError) -> JSONResponse:
        counters.client_errors += 1
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        return JSONResponse({"error": problems}, status_code=422)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        counters.server_errors += 1
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse(
            {"error": f"internal error ({type(exc).__name__}); the server log has the details"},
            status_code=500,
        )

    def read_upload(body: bytes, content_type: str | None) -> tuple[bytes, np.ndarray, np.ndarray]:
        """The file's bytes, its full-resolution gray pixels and the model's input (off the event
        loop: decoding a PNG takes milliseconds)."""
        data = file_from_body(body, content_type)
        gray = decode_image(data, limits.max_pixels)
        if uploads_dir is not None:
            log.info(
                "upload kept as %s (save_uploads)",
                save_upload(uploads_dir, data, sniff_format(data)),
            )
        return data, gray, predictor.model_input(gray)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "backend": predictor.backend.name,
            "uptime_s": round(time.time() - counters.started, 1),
            "predictions": counters.predictions,
            "client_errors": counters.client_errors,
            "server_errors": counters.server_errors,
            "batches": predictor.queue.batches,
        }

    @app.get("/model")
    async def model() -> dict:
        return {
            **predictor.card,
            "backend": predictor.backend.name,
            "max_upload_mb": limits.max_upload_bytes / 2**20,
            "max_pixels": limits.max_pixels,
            "notice": NOT_A_MEDICAL_DEVICE,
        }

    @app.post("/predict")
    async def predict(request: Request, overlay: str = "none", overlay_size: int = 512) -> dict:
        started = time.perf_counter()
        body = await read_limited(
            request.stream(), limits.max_upload_bytes, request.headers.get("content-length")
        )
        heat = predictor.heat_choice(overlay)
        if not 16 <= overlay_size <= limits.max_overlay_side:
            raise UploadError(
                422, f"overlay_size={overlay_size}: use 16 to {limits.max_overlay_side}"
            )
        data, gray, model_input = await run_in_threadpool(
            read_upload, body, request.headers.get("content-type")
        )
        result = await asyncio.wrap_future(predictor.submit(model_input, heat))
        overlays = {
            predictor.class_names[k]: await run_in_threadpool(overlay_png, gray, heat_map, overlay_size)
            for k, heat_map in result.maps.items()
        }  # fmt: skip
        table = predictor.table(result.probabilities)
        counters.predictions += 1
        return {
            "findings": [
                {
                    "finding": str(row.finding),
                    "probability": float(row.probability),
                    "threshold": float(row.threshold),
                    "above_threshold": bool(row.above_threshold),
                }
                for row in table.itertuples()
            ],
            "top_finding": str(table.at[0, "finding"]),
            "probabilities": {
                n: float(p)
                for n, p in zip(predictor.class_names, result.probabilities, strict=True)
            },
            "thresholds": dict(zip(predictor.class_names, predictor.thresholds, strict=True)),
            "overlays": overlays,
            "heatmaps": predictor.card["heatmaps"],
            "image": {
                "width": int(gray.shape[1]),
                "height": int(gray.shape[0]),
                "format": sniff_format(data),
            },  # fmt: skip
            "checkpoint_sha256": predictor.card["checkpoint_sha256"],
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
        }

    return app
