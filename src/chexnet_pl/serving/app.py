"""The web service: a page to read one X-ray, and a JSON API.

``GET /``        the page (drop a PNG or JPEG; prediction table; heat-map overlay of any finding)
``POST /predict`` the image as the request body, or as the ``file`` field of a multipart form;
                 ``?overlay=none|top|all|<finding>`` adds base64 PNG overlays → JSON
``GET /health``  liveness and counters
``GET /model``   classes, image size, preprocessing, thresholds, calibration, checkpoint SHA-256
                 (its file name, not where it lies on the server), limits
``GET /openapi.json`` the API's schema. There is no ``/docs`` or ``/redoc`` page (they would load
                 Swagger UI from a CDN into the browser of someone reading X-rays); both answer
                 404 with a message pointing at the schema.

Bad input is a 4xx with ``{"error": message}``; nothing a client sends makes a 500, and a 500
(a fault of the service) says what the user can do and gives a reference to find it in the log.
A request whose ``Host`` header is not one the service answers to is a 400 (``hosts``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse

from chexnet_pl.data.image_limits import check_max_pixels
from chexnet_pl.errors import ConfigError, ServingError, shown
from chexnet_pl.serving.decode import UploadError, decode_image, sniff_format
from chexnet_pl.serving.hosts import HostCheck
from chexnet_pl.serving.predictor import Predictor, overlay_png
from chexnet_pl.serving.uploads import file_from_body, read_limited, save_upload

log = logging.getLogger(__name__)

NOT_A_MEDICAL_DEVICE = (
    "Research software: not a medical device, not for diagnosis or any clinical decision."
)


# The request body a client may send for /predict (documented in /openapi.json).
IMAGE_BODY = {"schema": {"type": "string", "format": "binary"}}
PREDICT_BODY = {
    "required": True,
    "content": {
        **{kind: IMAGE_BODY for kind in ("image/png", "image/jpeg", "application/dicom")},
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"file": IMAGE_BODY}, "required": ["file"]}
        },
    },
}


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the service (the settings ``max_upload_mb``, ``max_pixels``)."""

    max_upload_bytes: int
    max_pixels: int
    max_overlay_side: int = 2048  # the longest side of an overlay (the page asks for 512)

    @classmethod
    def from_settings(cls, max_upload_mb: object, max_pixels: object) -> Limits:
        """Checked settings, or ConfigError naming the key and value."""
        try:
            upload_mb = float(max_upload_mb)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            upload_mb = float("nan")
        if not upload_mb > 0:
            raise ConfigError(f"max_upload_mb={shown(max_upload_mb)}: give a positive size in MB")
        pixels = check_max_pixels(max_pixels)
        if pixels is None:
            raise ConfigError(
                "max_pixels=null: the service needs a limit, e.g. max_pixels=40000000"
            )
        return cls(int(upload_mb * 2**20), pixels)


@dataclass
class Counters:
    started: float
    predictions: int = 0
    client_errors: int = 0
    server_errors: int = 0


def page_html() -> str:
    return files("chexnet_pl.serving").joinpath("page.html").read_text(encoding="utf-8")


def create_app(
    predictor: Predictor,
    limits: Limits,
    save_uploads: str | Path | None = None,
    allowed_hosts: frozenset[str] | None = None,
) -> FastAPI:
    """The FastAPI application around one loaded model; ``allowed_hosts``: the ``Host`` names it
    answers (``hosts.allowed_host_names``; None: any)."""
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

    def host_refused() -> None:
        counters.client_errors += 1

    app.add_middleware(HostCheck, allowed=allowed_hosts, on_refused=host_refused)

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
        reference = uuid.uuid4().hex[:8]
        log.error("%s %s failed (reference %s)", request.method, request.url.path, reference,
                  exc_info=exc)  # fmt: skip
        return JSONResponse(
            {
                "error": f"the service failed on this request ({type(exc).__name__}, reference "
                f"{reference}): a fault of the service, not something wrong with your image "
                "that it could name. Try again; if it fails again, try another image, and tell "
                f"whoever runs the service the reference {reference}: its log has the details.",
                "reference": reference,
            },
            status_code=500,
        )

    def read_upload(body: bytes, content_type: str | None) -> tuple[bytes, np.ndarray, np.ndarray]:
        """The file's bytes, its full-resolution gray pixels and the model's input (off the event
        loop: decoding a PNG takes milliseconds)."""
        data = file_from_body(body, content_type)
        # a Deflated DICOM may inflate no further than an uncompressed upload may be long
        gray = decode_image(data, limits.max_pixels, limits.max_upload_bytes)
        if uploads_dir is not None:
            log.info(
                "upload kept as %s (save_uploads)",
                save_upload(uploads_dir, data, sniff_format(data)),
            )
        return data, gray, predictor.model_input(gray)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/docs", include_in_schema=False)
    @app.get("/redoc", include_in_schema=False)
    async def no_docs_page() -> JSONResponse:
        return JSONResponse(
            {
                "error": "no documentation page here: /docs and /redoc would load Swagger UI from "
                "a CDN into your browser. The API's schema is at /openapi.json (open it in any "
                "OpenAPI viewer); the endpoints are described in docs/serving.md."
            },
            status_code=404,
        )

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

    @app.post("/predict", openapi_extra={"requestBody": PREDICT_BODY})
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
        decisions = predictor.decisions(result.probabilities) or {}
        conformal = predictor.card.get("conformal")
        counters.predictions += 1
        return {
            "findings": [
                {
                    "finding": str(row.finding),
                    "probability": float(row.probability),
                    # null: the threshold is undefined (threshold_note says why): no verdict
                    "threshold": None if pd.isna(row.threshold) else float(row.threshold),
                    "above_threshold": None
                    if pd.isna(row.above_threshold)
                    else bool(row.above_threshold),
                    "threshold_note": str(row.threshold_note),
                    # positive / negative / refer at the conformal alpha (null: no rule)
                    "decision": decisions.get(str(row.finding)),
                }
                for row in table.itertuples()
            ],
            "top_finding": str(table.at[0, "finding"]),
            "probabilities": {
                n: float(p)
                for n, p in zip(predictor.class_names, result.probabilities, strict=True)
            },
            "thresholds": predictor.card["thresholds"],
            "thresholds_chosen": predictor.card.get("thresholds_chosen"),
            "decisions": decisions or None,
            "conformal": {"alpha": conformal["alpha"], "file": conformal.get("file")}
            if conformal
            else None,
            "model": predictor.card.get("model"),
            "overlays": overlays,
            "heatmaps": predictor.card["heatmaps"],
            "image": {
                "width": int(gray.shape[1]),
                "height": int(gray.shape[0]),
                "format": sniff_format(data),
            },  # fmt: skip
            "calibration": predictor.calibration_label,  # None: raw probabilities
            "ood": predictor.ood_answer(result),  # None: the model has no OOD flag
            "checkpoint_sha256": predictor.card["checkpoint_sha256"],
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
        }

    return app
