"""``deliver``: send one report to one destination, retrying with back-off until it is taken."""

from __future__ import annotations

import logging
from pathlib import Path

from celery import Task

from dicom_node.core.contract import Deliver, TaskOutcome
from dicom_node.core.errors import DeliveryError, SpoolError
from dicom_node.core.ledger import DeliveryState
from workers.context import current
from workers.destinations import send

log = logging.getLogger(__name__)


def backoff_seconds(retries: int, base: float, cap: float) -> float:
    """Exponential back-off: ``min(cap, base * 2**retries)`` seconds."""
    return float(min(cap, base * (2 ** min(retries, 32))))


def deliver(task: Task, request: Deliver) -> TaskOutcome:
    """Send a report to its destination; on failure retry, never drop it.

    Parameters
    ----------
    task : celery.Task
        The bound task (for ``retry``).
    request : Deliver
        Delivery id, report file and destination.

    Returns
    -------
    TaskOutcome
        ``delivered``, or ``skipped`` when it was delivered before.

    Raises
    ------
    celery.exceptions.Retry
        After a failed attempt: the task runs again after the back-off.
    """
    ctx = current()
    settings = ctx.settings
    delivery = ctx.ledger.get_delivery(request.delivery_id)
    if delivery is None or delivery.state == DeliveryState.DELIVERED:
        return TaskOutcome(state=DeliveryState.DELIVERED.value, outcome="skipped")
    try:
        where = send(request.destination, Path(request.report_path), settings)
    except (DeliveryError, SpoolError, OSError) as exc:
        retries = task.request.retries
        delay = backoff_seconds(
            retries, settings.delivery_retry_base_seconds, settings.delivery_retry_max_seconds
        )
        reason = str(exc) if isinstance(exc, DeliveryError) else exc.__class__.__name__
        ctx.ledger.record_delivery_attempt(request.delivery_id, error=reason)
        log.warning(
            "delivery %d to %s: attempt %d failed (%s); retrying in %.1f s",
            request.delivery_id,
            request.destination,
            retries + 1,
            reason,
            delay,
        )
        raise task.retry(exc=exc, countdown=delay) from exc
    ctx.ledger.record_delivery_attempt(request.delivery_id, error=None)
    ctx.ledger.transition_delivery(request.delivery_id, DeliveryState.DELIVERED)
    report = Path(request.report_path).stem
    log.info("delivery %d: report %s sent to %s", request.delivery_id, report, where)
    return TaskOutcome(state=DeliveryState.DELIVERED.value, detail=where)
