"""A dynamic batcher: single images in, backend calls of up to ``max_batch`` images out.

The analyses a worker process runs at once (Celery's threads pool) share one
batcher per model. Each submits its images one by one, as soon as each is
preprocessed, and gets a :class:`concurrent.futures.Future` per image. One
thread owns the backend: it waits for the first image, then collects images
until it has ``max_batch`` of them or ``max_delay`` seconds have passed since
the oldest one arrived, runs the backend once on them, and resolves every
image's future with its own row of scores. STAT images are taken before
routine ones; within a priority, first come first served. So a batch may
hold images of several studies, a study's images may span several batches,
and each image's result goes to its own future exactly once.

This is the dynamic batching of NVIDIA Triton Inference Server's scheduler
(``max_queue_delay_microseconds``, ``preferred_batch_size``, priority levels;
Triton docs, "Dynamic Batcher"), kept inside one worker process: Celery and
Redis stay the distribution layer between processes and hosts.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from dicom_node.core.contract import Priority
from dicom_node.core.errors import InferenceError
from models.backends import LoadedModel
from models.contract import to_batch
from workers.batching.stats import BatchStats

log = logging.getLogger(__name__)

RANK: dict[str, int] = {"stat": 0, "routine": 1}
"""Order in which priorities are served (lower first)."""

Scores = npt.NDArray[np.float32]


@dataclass(order=True)
class _Item:
    rank: int
    seq: int
    arrived: float = field(compare=False)
    image: npt.NDArray[np.float32] = field(compare=False, repr=False)
    future: Future[Scores] = field(compare=False, repr=False)


class DynamicBatcher:
    """Batches single images of any number of analyses into backend calls.

    Parameters
    ----------
    model : LoadedModel
        The model; only this batcher's thread calls its backend once started.
    max_batch : int
        Images per backend call at most (``manifest.serving.max_batch`` or
        ``DICOM_NODE_BATCH_MAX_SIZE``).
    max_delay : float
        Seconds a batch waits for more images after its oldest one arrived
        (``serving.max_delay_ms`` / 1000). 0: run whatever is queued at once.
    name : str
        For the thread name and logs (the model id).

    Raises
    ------
    ValueError
        If ``max_batch < 1`` or ``max_delay < 0``.
    """

    def __init__(
        self, model: LoadedModel, max_batch: int, max_delay: float, name: str = ""
    ) -> None:
        if max_batch < 1 or max_delay < 0:
            raise ValueError(f"max_batch {max_batch} must be >= 1 and max_delay {max_delay} >= 0")
        self.model = model
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.name = name or model.manifest.id
        self._queue: list[_Item] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False
        self._drain = True
        self._thread: threading.Thread | None = None
        self._in_flight: list[_Item] = []
        self._stats = BatchStats()

    # --- life cycle ---------------------------------------------------------------------

    def start(self) -> DynamicBatcher:
        """Start the batching thread (once; later calls do nothing). Returns ``self``.

        Raises
        ------
        InferenceError
            If the batcher was stopped.
        """
        with self._cond:
            if self._stopping:
                raise InferenceError(f"batcher {self.name} is stopped")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name=f"batcher-{self.name}", daemon=True
                )
                self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """Whether the batching thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 30.0, drain: bool = True) -> None:
        """Stop taking images and end the thread; never hangs longer than ``timeout``.

        Parameters
        ----------
        timeout : float
            Seconds to wait for the thread (draining included).
        drain : bool
            Run the images already queued first; False fails them at once.

        Every future not resolved when the thread ended (or after ``timeout``,
        a backend call still in progress included) fails with
        :class:`~dicom_node.core.errors.InferenceError`.
        """
        with self._cond:
            self._stopping = True
            self._drain = drain
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._cond:
            left = self._queue + self._in_flight
            self._queue = []
        stopped = InferenceError(f"batcher {self.name} stopped before this image was run")
        for item in left:
            _fail(item.future, stopped)

    # --- use ----------------------------------------------------------------------------

    def submit(
        self, image: npt.NDArray[np.float32], priority: Priority = "routine"
    ) -> Future[Scores]:
        """Queue one preprocessed image.

        Parameters
        ----------
        image : ndarray
            ``(C, H, W) float32``, checked with :func:`models.contract.check_image`.
        priority : {"routine", "stat"}
            STAT images are batched before every routine one.

        Returns
        -------
        concurrent.futures.Future
            Resolves to the image's activated scores ``(L,) float32`` (column
            ``j`` is ``manifest.labels[j]``), or fails with the backend's
            exception (:class:`~dicom_node.core.errors.InferenceError`, ...).
            Cancelling it before its batch is taken leaves the image out.

        Raises
        ------
        InferenceError
            If the batcher is stopped or was never started.
        """
        future: Future[Scores] = Future()
        with self._cond:
            if self._stopping or self._thread is None:
                raise InferenceError(f"batcher {self.name} is not running")
            item = _Item(RANK[priority], next(self._seq), time.monotonic(), image, future)
            heapq.heappush(self._queue, item)
            self._cond.notify()
        return future

    def pending(self) -> int:
        """Images queued and not yet taken into a batch."""
        with self._cond:
            return len(self._queue)

    def stats(self) -> BatchStats:
        """Counters since start: batches, images, mean batch size, busy seconds, histogram."""
        with self._cond:
            return self._stats

    # --- the batching thread ------------------------------------------------------------

    def _next_batch(self) -> list[_Item] | None:
        """Wait for a batch (None: stop). Images are taken in (priority, arrival) order."""
        with self._cond:
            while True:
                if self._stopping and (not self._drain or not self._queue):
                    return None
                if not self._queue:
                    self._cond.wait()
                    continue
                oldest = min(item.arrived for item in self._queue)
                wait = oldest + self.max_delay - time.monotonic()
                if len(self._queue) >= self.max_batch or wait <= 0 or self._stopping:
                    break
                self._cond.wait(wait)
            size = min(self.max_batch, len(self._queue))
            taken = [heapq.heappop(self._queue) for _ in range(size)]
            batch = [item for item in taken if item.future.set_running_or_notify_cancel()]
            self._in_flight = batch
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if batch:
                self._run(batch)

    def _run(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        failed = False
        try:
            scores = self.model.predict(to_batch(self.model.manifest, [i.image for i in batch]))
        except Exception as exc:  # a backend failure fails this batch, not the batcher
            failed = True
            log.error(
                "model %s: backend call on %d image(s) failed: %s",
                self.name,
                len(batch),
                exc.__class__.__name__,
            )
            for item in batch:
                _fail(item.future, exc)
        else:
            for row, item in enumerate(batch):
                _resolve(item.future, scores[row].copy())
        seconds = time.perf_counter() - started
        with self._cond:
            self._in_flight = []
            self._stats = self._stats.added(len(batch), seconds, failed)


def _resolve(future: Future[Scores], scores: Scores) -> None:
    with contextlib.suppress(InvalidStateError):  # failed by stop() while the backend ran
        future.set_result(scores)


def _fail(future: Future[Scores], exc: BaseException) -> None:
    if future.done():
        return
    try:
        if future.running() or future.set_running_or_notify_cancel():
            future.set_exception(exc)
    except (InvalidStateError, RuntimeError):  # resolved or cancelled meanwhile
        pass
