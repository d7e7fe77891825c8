"""The publisher: hands a complete study to the broker as a ``route_study`` task, by name.

The SCP process never imports worker or model code: it builds a publish-only
Celery app (no result backend) and sends the task named in
:mod:`dicom_node.core.contract`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dicom_node.core.contract import ROUTE_QUEUE, ROUTE_TASK, RouteStudy
from dicom_node.core.errors import ConfigError, EnqueueError
from dicom_node.core.settings import Settings

Publish = Callable[[RouteStudy], None]
"""``publish(payload)``; raises :class:`EnqueueError` when the broker does not take it."""

_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}


def celery_publisher(settings: Settings) -> Publish:
    """Return a function that publishes ``route_study`` tasks to the broker.

    Parameters
    ----------
    settings : Settings
        Needs ``broker_url``.

    Returns
    -------
    Publish
        Sends one message per call, with a short connection retry.

    Raises
    ------
    ConfigError
        If no broker URL is configured.

    Notes
    -----
    No result backend: with a Redis result backend every ``send_task`` also
    subscribes for the result, which during a Redis outage fails with "the
    Celery application must be restarted" and slowed recovery from about 2.5 s
    to 20 s (``tests/test_outage.py``).
    """
    from celery import Celery

    if not settings.broker_url:
        raise ConfigError("DICOM_NODE_BROKER_URL is not set (dicom-node up sets it for you)")
    app = Celery("dicom_node_publisher", broker=settings.broker_url)
    app.conf.update(task_serializer="json", accept_content=["json"])

    def publish(payload: RouteStudy) -> None:
        kwargs: dict[str, Any] = {"request": payload.model_dump(mode="json")}
        try:
            app.send_task(
                ROUTE_TASK,
                kwargs=kwargs,
                task_id=payload.task_id,
                queue=ROUTE_QUEUE,
                retry=True,
                retry_policy=_RETRY_POLICY,
            )
        except Exception as exc:  # kombu raises several connection error types
            raise EnqueueError(f"{exc.__class__.__name__}: {exc}") from exc

    return publish
