"""One thread owns the model; concurrent requests queue for it and are run together.

The worker takes every job waiting when it becomes free (up to ``max_batch``) and runs them as one
batch: no request waits for a batch to fill, and under load the batches grow by themselves.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

from chexnet_pl.errors import ConfigError

log = logging.getLogger(__name__)

Job = TypeVar("Job")
Result = TypeVar("Result")
_STOP = object()


class BatchingQueue(Generic[Job, Result]):
    """``submit(job)`` → a Future of ``run_batch([..., job, ...])``'s result for that job."""

    def __init__(
        self, run_batch: Callable[[Sequence[Job]], Sequence[Result]], max_batch: int = 8
    ) -> None:
        if max_batch < 1:
            raise ConfigError(f"max_batch={max_batch}; use 1 or more")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.batches = 0
        self.jobs = 0
        self._queue: queue.Queue[Any] = queue.Queue()
        self._worker = threading.Thread(target=self._serve, name="model-worker", daemon=True)
        self._worker.start()

    def submit(self, job: Job) -> Future[Result]:
        future: Future[Result] = Future()
        self._queue.put((job, future))
        return future

    def close(self) -> None:
        self._queue.put(_STOP)
        self._worker.join()

    def _take_batch(self) -> tuple[list[tuple[Job, Future]], bool]:
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch, stop = [first], False
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _serve(self) -> None:
        stop = False
        while not stop:
            batch, stop = self._take_batch()
            if not batch:
                continue
            jobs = [job for job, _ in batch]
            try:
                results = self.run_batch(jobs)
            except Exception as exc:  # every waiting request gets the error; the worker lives on
                log.exception("a batch of %d failed", len(jobs))
                for _, future in batch:
                    future.set_exception(exc)
                continue
            self.batches += 1
            self.jobs += len(jobs)
            for (_, future), result in zip(batch, results, strict=True):
                future.set_result(result)
