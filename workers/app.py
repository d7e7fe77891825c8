"""The Celery application: Redis broker and result backend, reliability settings on purpose.

- JSON only (``task_serializer``/``accept_content``); pickle is never accepted.
- ``task_acks_late`` with ``task_reject_on_worker_lost``: a task whose worker
  dies is delivered again, so every task here is idempotent (it checks the
  ledger's state and generation before acting, and report UIDs are derived
  from the study, not random).
- ``worker_prefetch_multiplier=1``: a GPU worker holds one study at a time.
- ``visibility_timeout`` is longer than the longest delivery back-off, so a
  delayed retry is not delivered twice.

Run a worker with ``celery -A workers.app worker`` (or ``dicom-node worker``).
"""

from __future__ import annotations

from celery import Celery

from dicom_node.core.settings import Settings, load_settings
from dicom_node.core.errors import ConfigError
from dicom_node.core.contract import ANALYZE_TASK, DELIVER_TASK, DELIVERY_QUEUE, model_queue

VISIBILITY_TIMEOUT_SECONDS = 4 * 3600


def create_app(settings: Settings, with_results: bool = True) -> Celery:
    """Build the Celery app for ``settings``.

    Parameters
    ----------
    settings : Settings
        Node settings (broker URL, model id, retry cap).
    with_results : bool
        Use Redis as result backend. The SCP only publishes and passes False:
        with a Redis result backend every ``send_task`` also subscribes for the
        result, which during an outage fails with "the Celery application must
        be restarted" and slowed recovery after Redis returned (about 20 s
        instead of 2.5 s in ``tests/test_outage.py``).

    Raises
    ------
    ConfigError
        If no broker URL is configured.
    """
    if not settings.broker_url:
        raise ConfigError("DICOM_NODE_BROKER_URL is not set (dicom-node up sets it for you)")
    if settings.delivery_retry_max_seconds >= VISIBILITY_TIMEOUT_SECONDS:
        raise ConfigError(
            "DICOM_NODE_DELIVERY_RETRY_MAX_SECONDS must be below the visibility timeout"
        )
    backend = settings.broker_url if with_results else None
    app = Celery("dicom_node", broker=settings.broker_url, backend=backend)
    transport = {"visibility_timeout": VISIBILITY_TIMEOUT_SECONDS}
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        result_expires=7 * 24 * 3600,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        broker_connection_retry_on_startup=True,
        worker_proc_alive_timeout=300,
        worker_hijack_root_logger=False,
        task_routes={
            ANALYZE_TASK: {"queue": model_queue(settings.model_id)},
            DELIVER_TASK: {"queue": DELIVERY_QUEUE},
        },
        include=["workers.tasks.analyze.analyze"],
    )
    return app


_settings = load_settings()
app = create_app(_settings) if _settings.broker_url else Celery("dicom_node")
"""The worker's app, built from the environment (``celery -A workers.app``)."""
