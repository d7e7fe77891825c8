"""The SCP's side of the broker: publish tasks by name, and ask which tasks live workers hold.

The SCP process never imports worker or model code: it builds a publish-only
Celery app (:func:`publisher_app`, no result backend) and sends the tasks
named in :mod:`dicom_node.core.contract`. :func:`celery_publisher` hands a
complete study to the ``route`` queue; :class:`CeleryBroker` serves the stall
sweeper (:mod:`dicom_node.ingest.recovery`): which task ids live workers
execute, hold reserved or scheduled, or still wait in a queue, and publishing
an ``analyze`` message again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from dicom_node.core.contract import (
    ANALYZE_TASK,
    CELERY_PRIORITY,
    ROUTE_QUEUE,
    ROUTE_TASK,
    Analyze,
    RouteStudy,
    model_queue,
    transport_options,
)
from dicom_node.core.errors import ConfigError, EnqueueError
from dicom_node.core.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

Publish = Callable[[RouteStudy], None]
"""``publish(payload)``; raises :class:`EnqueueError` when the broker does not take it."""

_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}


def publisher_app(settings: Settings) -> Celery:
    """Build the SCP's publish-only Celery app (JSON, no result backend).

    Parameters
    ----------
    settings : Settings
        Needs ``broker_url``.

    Returns
    -------
    celery.Celery
        Not set as the current app; nothing is connected until first use.

    Raises
    ------
    ConfigError
        If no broker URL is configured.

    Notes
    -----
    No result backend: with a Redis result backend every ``send_task`` also
    subscribes for the result, which during a Redis outage fails with "the
    Celery application must be restarted" and slowed recovery from about 2.5 s
    to 20 s (``tests/test_outage.py``). Short socket timeouts keep a hung
    broker from blocking the completion monitor or the stall sweeper forever.
    """
    from celery import Celery

    if not settings.broker_url:
        raise ConfigError("DICOM_NODE_BROKER_URL is not set (dicom-node up sets it for you)")
    app = Celery("dicom_node_publisher", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={
            **transport_options(),
            "socket_connect_timeout": 2.0,
            "socket_timeout": 10.0,
        },
        task_default_priority=CELERY_PRIORITY["routine"],
        broker_connection_timeout=2.0,
    )
    return app


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
    """
    app = publisher_app(settings)

    def publish(payload: RouteStudy) -> None:
        send_by_name(app, ROUTE_TASK, payload.model_dump(mode="json"), payload.task_id, ROUTE_QUEUE)

    return publish


def send_by_name(
    app: Celery,
    task: str,
    request: dict[str, Any],
    task_id: str,
    queue: str,
    priority: int = CELERY_PRIORITY["routine"],
) -> None:
    """Publish one task by name with a short connection retry (what every publisher here does).

    Parameters
    ----------
    app : celery.Celery
        A :func:`publisher_app`.
    task, task_id, queue : str
        Task name, its deterministic id, the queue.
    request : dict
        The task's JSON payload (its ``request`` keyword argument).
    priority : int
        Celery priority (:data:`dicom_node.core.contract.CELERY_PRIORITY`).

    Raises
    ------
    EnqueueError
        If the broker does not take it.
    """
    try:
        app.send_task(
            task,
            kwargs={"request": request},
            task_id=task_id,
            queue=queue,
            priority=priority,
            retry=True,
            retry_policy=_RETRY_POLICY,
        )
    except Exception as exc:  # kombu raises several connection error types
        raise EnqueueError(f"{exc.__class__.__name__}: {exc}") from exc


class CeleryBroker:
    """What the stall sweeper asks of the broker, over its own publish-only app.

    Parameters
    ----------
    settings : Settings
        Needs ``broker_url``.
    inspect_timeout : float, optional
        Seconds to collect the workers' replies to one ``query_task``.

    Raises
    ------
    ConfigError
        If no broker URL is configured.
    """

    def __init__(self, settings: Settings, inspect_timeout: float = 1.0) -> None:
        self.app = publisher_app(settings)
        self.inspect_timeout = inspect_timeout

    def held_task_ids(self, task_queues: Mapping[str, str]) -> set[str]:
        """Which of these task ids a live worker holds or a queue still carries.

        Parameters
        ----------
        task_queues : mapping of str to str
            Task id → the queue its message was published to.

        Returns
        -------
        set of str
            Ids that a live worker executes, holds reserved (prefetched) or
            scheduled (a retry's countdown), by Celery's ``query_task`` remote
            control command, plus ids whose message still waits in its queue.
            A message held only by a dead worker (left unacknowledged in
            Redis until the visibility timeout) is not held.

        Raises
        ------
        EnqueueError
            If the broker cannot be reached.
        """
        ids = list(task_queues)
        if not ids:
            return set()
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1)
                inspect = self.app.control.inspect(timeout=self.inspect_timeout, connection=conn)
                replies = inspect.query_task(*ids) or {}
                held = {task_id for per_worker in replies.values() for task_id in per_worker or {}}
                held |= _queued_ids(conn, set(task_queues.values()))
        except Exception as exc:  # kombu and redis-py raise several connection error types
            raise EnqueueError(f"{exc.__class__.__name__}: {exc}") from exc
        return held & set(ids)

    def publish_analyze(self, payload: Analyze) -> None:
        """Publish an ``analyze`` message to ``infer.<model id>`` under its deterministic id.

        It keeps its priority: a re-published STAT analysis is still served first.

        Raises
        ------
        EnqueueError
            If the broker does not take it.
        """
        send_by_name(
            self.app,
            ANALYZE_TASK,
            payload.model_dump(mode="json"),
            payload.task_id,
            model_queue(payload.model_id),
            payload.celery_priority,
        )


def _queued_ids(conn: Any, queues: Iterable[str]) -> set[str]:
    r"""Task ids of the messages waiting in ``queues`` (Redis transport; empty otherwise).

    kombu keeps a Redis queue as a list named after the queue, one list per
    priority step (the queue name, ``\x06\x16`` and the priority); each item is a JSON message
    whose ``headers.id`` is the Celery task id (task message protocol 2).
    """
    channel = conn.default_channel
    q_for_pri = getattr(channel, "_q_for_pri", None)
    if q_for_pri is None or not hasattr(channel, "conn_or_acquire"):
        return set()
    found: set[str] = set()
    with channel.conn_or_acquire() as client:  # a synchronous redis-py client
        for queue in queues:
            for name in {q_for_pri(queue, pri) for pri in channel.priority_steps}:
                for item in client.lrange(name, 0, -1):
                    try:
                        found.add(str(json.loads(item)["headers"]["id"]))
                    except (ValueError, KeyError, TypeError):
                        continue
    return found
