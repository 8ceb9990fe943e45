"""The web service under load: N concurrent clients on loopback send real X-rays to POST /predict
until a fixed number of requests is answered or a time limit passes.

    .venv/bin/python benchmarks/serve.py [--backend torch|onnx] [--clients 4] [--requests 200]
        [--max-seconds 300] [--overlay none|top] [--ckpt best.ckpt] [--size 224]

It starts ``python -m chexnet_pl.serve`` itself (a randomly initialised DenseNet-121 at ``--size``
unless ``--ckpt`` is given), and prints throughput, latency percentiles, errors (must be 0: the
exit status is 1 otherwise) and the mean batch the server ran.
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
import torch

from chexnet_pl.data.nih_table import class_names
from chexnet_pl.models.module import shipped_model

REPO = Path(__file__).resolve().parents[1]
NIH_SAMPLE = Path(
    os.environ.get("CHEXNET_SHARED_DATA", REPO.parent / "shared" / "data")
) / "nih-sample" / "images"  # fmt: skip


def random_checkpoint(path: Path, size: int) -> Path:
    torch.manual_seed(0)
    model = shipped_model(pretrained=False, class_names=class_names())
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "datamodule_hyper_parameters": {"image_size": size},
                "pytorch-lightning_version": "2"}, path)  # fmt: skip
    return path


def xrays() -> list[bytes]:
    files = sorted(NIH_SAMPLE.glob("*.png"))[:16]
    if not files:
        raise SystemExit(f"no NIH sample images in {NIH_SAMPLE} (set CHEXNET_SHARED_DATA)")
    return [f.read_bytes() for f in files]


def start_server(folder: Path, checkpoint: Path, backend: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(folder / "server.log", "w")  # noqa: SIM115 (kept open for the server's life)
    process = subprocess.Popen(
        [sys.executable, "-m", "chexnet_pl.serve", f"ckpt={checkpoint}", f"port={port}",
         f"backend={backend}", "access_log=false", f"hydra.run.dir={folder / 'run'}"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {(folder / 'server.log').read_text()[-2000:]}")
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return process, url
        except requests.ConnectionError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("the server did not start within 10 minutes")


def load(
    url: str, images: list[bytes], args: argparse.Namespace
) -> tuple[list[float], list[str], float]:
    """Latencies (s) of the answered requests, the errors, and the wall time."""
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + args.max_seconds

    def client() -> None:
        session = requests.Session()
        while time.monotonic() < deadline:
            with lock:
                index = next(counter)
            if index >= args.requests:
                return
            start = time.perf_counter()
            try:
                answer = session.post(f"{url}/predict", params={"overlay": args.overlay},
                                      data=images[index % len(images)], timeout=120)  # fmt: skip
                ok = answer.status_code == 200
                problem = f"{answer.status_code}: {answer.text[:200]}"
            except requests.RequestException as exc:
                ok, problem = False, f"{type(exc).__name__}: {exc}"
            with lock:
                if ok:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors.append(problem)

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--max-seconds", type=float, default=300)
    parser.add_argument("--overlay", default="none", help="none | top (the page's first request)")
    parser.add_argument("--ckpt", type=Path, default=None)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--quick", action="store_true", help="2 clients, 6 requests, 64 px")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.requests, args.size, args.max_seconds = 2, 6, 64, 120
    images = xrays()
    with tempfile.TemporaryDirectory(prefix="serve_bench_") as folder:
        folder = Path(folder)
        checkpoint = args.ckpt or random_checkpoint(folder / "densenet121.ckpt", args.size)
        process, url = start_server(folder, checkpoint, args.backend)
        try:
            for image in images[:3]:  # warm-up
                requests.post(f"{url}/predict", data=image, timeout=300).raise_for_status()
            before = requests.get(f"{url}/health", timeout=10).json()
            latencies, errors, wall = load(url, images, args)
            after = requests.get(f"{url}/health", timeout=10).json()
        finally:
            process.terminate()
            process.wait(30)
    batches = after["batches"] - before["batches"]
    answered = len(latencies)
    p50, p95, p99 = (
        (np.percentile(latencies, q) * 1000 for q in (50, 95, 99)) if latencies else (0, 0, 0)
    )
    print(
        f"backend={args.backend} clients={args.clients} overlay={args.overlay} "
        f"{'random DenseNet-121' if not args.ckpt else args.ckpt} at {args.size} px, "
        f"1024x1024 NIH PNGs, {os.cpu_count()} CPUs"
    )
    print(
        f"answered {answered} of {args.requests} in {wall:.1f} s: {answered / wall:.2f} requests/s"
    )
    print(f"latency ms: p50 {p50:.0f}, p95 {p95:.0f}, p99 {p99:.0f}, "
          f"mean {statistics.mean(latencies) * 1000 if latencies else 0:.0f}")  # fmt: skip
    print(f"errors: {len(errors)}; mean batch run by the server: {answered / max(batches, 1):.2f}")
    for problem in errors[:5]:
        print("  ", problem)
    if errors:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
