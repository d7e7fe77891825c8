"""The Celery app factory and the worker's command line. Nothing is built at import time.

Reliability settings, chosen on purpose:

- JSON only (``task_serializer``/``accept_content``); pickle is never accepted.
  Payloads are the pydantic models of :mod:`dicom_node.core.contract`
  (``pydantic=True``).
- ``task_acks_late`` with ``task_reject_on_worker_lost``: a task whose worker
  dies is delivered again, so every task is idempotent (it claims its ledger
  row through the transition table first, and report UIDs are derived, not
  random).
- ``worker_prefetch_multiplier=1``: a GPU worker holds one task at a time.
- ``visibility_timeout`` is longer than the longest delivery back-off, so a
  delayed retry is not delivered twice.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

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
        task_track_started=True,
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


def run_worker(
    settings: Settings,
    model_ids: Sequence[str],
    concurrency: int = 1,
    hostname: str | None = None,
) -> None:
    """Run a Celery worker in this process until it is stopped (SIGTERM: warm shutdown).

    Each pool process creates its :class:`~workers.context.WorkerContext`
    when it starts (``worker_process_init``) and warms its models, so the
    first study does not wait.

    Parameters
    ----------
    settings : Settings
        Node settings; ``broker_url`` is required.
    model_ids : sequence of str
        Models this worker holds; it consumes their ``infer.<id>`` queues.
    concurrency : int
        Pool processes (one per GPU).
    hostname : str, optional
        Celery node name.

    Raises
    ------
    ConfigError
        See :func:`create_app`; also when ``model_ids`` is empty.
    """
    if not model_ids:
        raise ConfigError("a worker needs at least one model (--models)")
    from dicom_node.core.redact import capture_library_warnings

    capture_library_warnings()  # pydicom/highdicom warnings quote values (PHI)
    app = create_app(settings)

    def init_process(**_: Any) -> None:
        from workers.context import init_context

        capture_library_warnings()
        init_context(settings, model_ids).warm_up()

    worker_process_init.connect(init_process, weak=False)
    argv = [
        "worker",
        "-Q",
        ",".join(worker_queues(model_ids)),
        "--concurrency",
        str(concurrency),
        "--loglevel",
        settings.log_level,
        "--without-gossip",
        "--without-mingle",
        "--hostname",
        hostname or f"dicom-node-{os.getpid()}@%h",
    ]
    log.info("worker for models %s on queues %s", ", ".join(model_ids), argv[2])
    app.worker_main(argv)
