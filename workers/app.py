"""The Celery app factory and the worker's command line. Nothing is built at import time.

Reliability settings, chosen on purpose:

- JSON only (``task_serializer``/``accept_content``); pickle is never accepted.
  Payloads are the pydantic models of :mod:`dicom_node.core.contract`
  (``pydantic=True``).
- ``task_acks_late`` with ``task_reject_on_worker_lost``: a task whose worker
  dies is delivered again, so every task is idempotent (it claims its ledger
  row through the transition table first, and report UIDs are derived, not
  random).
- Celery's threads pool (``--pool threads``, ``worker_concurrency`` threads):
  the analyses a worker runs at once share its models, one
  :class:`~workers.batching.DynamicBatcher` per model (batches across
  studies) and its preprocessing threads (:class:`~workers.context.WorkerContext`).
- ``worker_prefetch_multiplier=1``: a worker holds no more messages than it
  has threads, so a STAT message (a higher Celery priority, filed by the Redis
  transport under its own priority step) waits in Redis for the next free
  thread, not behind routine messages a busy worker reserved.
- ``visibility_timeout`` is longer than the longest delivery back-off, so a
  delayed retry is not delivered twice.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from celery import Celery

from dicom_node.core.contract import (
    CELERY_PRIORITY,
    DELIVERY_QUEUE,
    ROUTE_QUEUE,
    VISIBILITY_TIMEOUT_SECONDS,
    model_queue,
    transport_options,
)
from dicom_node.core.errors import ConfigError
from dicom_node.core.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings, with_results: bool = True) -> Celery:
    """Build the Celery app for ``settings`` and register the task chain on it.

    Parameters
    ----------
    settings : Settings
        Node settings (broker URL, retry cap).
    with_results : bool
        Use Redis as result backend (task outcomes, for ``celery inspect`` and Flower).

    Returns
    -------
    Celery
        The app, with the tasks of :mod:`workers.tasks` registered.

    Raises
    ------
    ConfigError
        If no broker URL is configured, or the delivery back-off cap is not
        below the visibility timeout.
    """
    from workers.tasks import register_tasks

    if not settings.broker_url:
        raise ConfigError("DICOM_NODE_BROKER_URL is not set (dicom-node up sets it for you)")
    if settings.delivery_retry_max_seconds >= VISIBILITY_TIMEOUT_SECONDS:
        raise ConfigError(
            "DICOM_NODE_DELIVERY_RETRY_MAX_SECONDS must be below the visibility timeout"
        )
    backend = settings.broker_url if with_results else None
    app = Celery("dicom_node", broker=settings.broker_url, backend=backend, set_as_current=False)
    transport = transport_options()
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # No STARTED write to the result backend before a task's body: with Redis just gone,
        # that write fails and the taken message never runs (it waits for the visibility
        # timeout). The ledger records what runs; `query_task` sees what a worker holds.
        task_track_started=False,
        task_default_priority=CELERY_PRIORITY["routine"],
        result_expires=7 * 24 * 3600,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        broker_connection_retry_on_startup=True,
        worker_proc_alive_timeout=300,
        worker_hijack_root_logger=False,
    )
    register_tasks(app)
    return app


def worker_queues(model_ids: Sequence[str]) -> list[str]:
    """Queues a worker serving ``model_ids`` consumes: route, delivery and ``infer.<id>`` each."""
    return [ROUTE_QUEUE, DELIVERY_QUEUE, *(model_queue(m) for m in model_ids)]


def worker_argv(
    settings: Settings, model_ids: Sequence[str], concurrency: int, hostname: str | None = None
) -> list[str]:
    """The ``celery worker`` command line of :func:`run_worker`: threads pool, our queues."""
    return [
        "worker",
        "-Q",
        ",".join(worker_queues(model_ids)),
        "--pool",
        "threads",
        "--concurrency",
        str(concurrency),
        "--loglevel",
        settings.log_level,
        "--without-gossip",
        "--without-mingle",
        "--hostname",
        hostname or f"dicom-node-{os.getpid()}@%h",
    ]


def run_worker(
    settings: Settings,
    model_ids: Sequence[str],
    concurrency: int | None = None,
    hostname: str | None = None,
) -> None:
    """Run a Celery worker in this process until it is stopped (SIGTERM: warm shutdown).

    The worker runs Celery's threads pool: one process per GPU, its
    analyses in threads sharing the process's
    :class:`~workers.context.WorkerContext`. The context is created and its
    models loaded and warmed up (every batch size their batchers use) here,
    before the worker consumes a message, so the first study does not wait
    (the threads pool has no ``worker_process_init``). It is closed when the
    worker stops: queued images run first.

    Parameters
    ----------
    settings : Settings
        Node settings; ``broker_url`` is required.
    model_ids : sequence of str
        Models this worker holds; it consumes their ``infer.<id>`` queues.
    concurrency : int, optional
        Analyses run at once (pool threads); default ``settings.worker_concurrency``.
    hostname : str, optional
        Celery node name.

    Raises
    ------
    ConfigError
        See :func:`create_app`; also when ``model_ids`` is empty, or
        ``settings.stat_rules`` is invalid.
    """
    if not model_ids:
        raise ConfigError("a worker needs at least one model (--models)")
    from dicom_node.core.redact import capture_library_warnings
    from workers.context import init_context

    capture_library_warnings()  # pydicom/highdicom warnings quote values (PHI)
    app = create_app(settings)
    threads = concurrency or settings.worker_concurrency
    ctx = init_context(settings, model_ids)
    ctx.warm_up()
    argv = worker_argv(settings, model_ids, threads, hostname)
    log.info(
        "worker for models %s on queues %s, %d threads", ", ".join(model_ids), argv[2], threads
    )
    try:
        app.worker_main(argv)
    finally:
        ctx.close()
