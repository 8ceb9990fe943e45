"""``chexnet-serve``'s settings (conf/serve.yaml), judged before the checkpoint is read."""

from __future__ import annotations

from dataclasses import dataclass

from chexnet_pl.validation import Problems

SERVE_BACKENDS = ("torch", "onnx")


@dataclass(frozen=True)
class ServeSettings:
    ckpt: str
    host: str
    port: int
    backend: str
    onnx: str | None
    image_size: int | None
    thresholds: str | None
    calibration: str | None
    conformal: str | None
    save_uploads: str | None
    max_upload_mb: float
    max_pixels: int
    max_batch: int
    access_log: bool
    allowed_hosts: list[str] | None  # Host names answered beside the loopback ones (["*"]: any)

    def __post_init__(self) -> None:
        problems = Problems()
        problems.path("ckpt", self.ckpt, optional=False)
        problems.text("host", self.host)
        problems.number("port", self.port, minimum=0, maximum=65535, integer=True)
        problems.choice("backend", self.backend, SERVE_BACKENDS)
        problems.path("onnx", self.onnx)
        if self.onnx is not None and self.backend != "onnx":
            problems.add(f"onnx={self.onnx} is for backend=onnx; add backend=onnx")
        problems.number("image_size", self.image_size, minimum=1, integer=True, optional=True)
        problems.path("thresholds", self.thresholds)
        problems.path("calibration", self.calibration)
        problems.path("conformal", self.conformal)
        problems.text("save_uploads", self.save_uploads, optional=True)
        problems.number("max_upload_mb", self.max_upload_mb, minimum=0, exclusive=True)
        problems.number("max_pixels", self.max_pixels, minimum=1, integer=True)
        problems.number("max_batch", self.max_batch, minimum=1, integer=True)
        problems.flag("access_log", self.access_log)
        hosts = self.allowed_hosts
        if hosts is not None and (
            isinstance(hosts, str) or not all(isinstance(h, str) and h for h in hosts)
        ):
            problems.add(f"allowed_hosts={hosts!r}: give a list of host names, e.g. [xray.local]")
        problems.raise_if_any()
