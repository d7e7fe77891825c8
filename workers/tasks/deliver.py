"""``deliver``: send an analysis's report objects to one destination, exactly once.

One task per (analysis, destination) sends every object still open for that
destination in one attempt (:func:`workers.destinations.send`: one association,
one STOW-RS request), and judges each object's status
(:func:`dicom_node.core.dimse.delivery_verdict`):

- Success, or a Warning (0xB000, 0xB006, 0xB007 ...): ``delivered``, the warning
  recorded with it.
- Refused (0xA7xx), or the destination unreachable (no connection, association
  rejected transiently or aborted, timeout, HTTP 5xx): ``retrying``; the task runs
  again after ``min(cap, base * 2**attempts)`` seconds, and after
  ``delivery_max_attempts`` attempts the object becomes a dead letter.
- An error (0xA9xx, 0xCxxx, SOP class not supported, HTTP 4xx), a report file
  that cannot be read, or a destination that is no longer configured: dead
  letter at once (``failed``), with its status.

Dead letters are listed by ``dicom-node status`` and ``dicom-node exports list``
and sent again by ``dicom-node exports retry``. An analysis whose study has a
newer generation is never sent: its deliveries become ``superseded``. A
destination that is down only delays its own tasks: each retry is a Celery
countdown, never a wait inside a worker.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from celery import Task
from pydicom.errors import InvalidDicomError

from dicom_node.core.contract import Deliver, TaskOutcome
from dicom_node.core.destinations import Destination
from dicom_node.core.dimse import delivery_verdict, status_text
from dicom_node.core.errors import ConfigError, DeliveryError, PermanentDeliveryError
from dicom_node.core.ledger import DeliveryState, Ledger, Outgoing
from dicom_node.core.redact import reason_for
from dicom_node.core.settings import Settings
from workers.context import current
from workers.destinations import Outbound, Sent, send

log = logging.getLogger(__name__)

_D = DeliveryState


def backoff_seconds(retries: int, base: float, cap: float) -> float:
    """Exponential back-off: ``min(cap, base * 2**retries)`` seconds."""
    return float(min(cap, base * (2 ** min(retries, 32))))


def deliver(task: Task, request: Deliver) -> TaskOutcome:
    """Send an analysis's open report objects to one destination; retry, never drop.

    Parameters
    ----------
    task : celery.Task
        The bound task (for ``retry``).
    request : Deliver
        Analysis id and destination name.

    Returns
    -------
    TaskOutcome
        ``delivered`` (with the counts), ``skipped`` when nothing is open,
        ``superseded`` when the study has a newer generation, ``failed`` when
        every open object became a dead letter.

    Raises
    ------
    celery.exceptions.Retry
        When an object was refused or the destination could not be reached and
        attempts are left: the task runs again after the back-off.
    """
    ctx = current()
    ledger, settings = ctx.ledger, ctx.settings
    items = ledger.outgoing(request.analysis_id, request.destination)
    if not items:
        return TaskOutcome(state=_D.DELIVERED.value, outcome="skipped")
    if not ledger.analysis_is_current(request.analysis_id):
        count = ledger.supersede_deliveries(request.analysis_id)
        log.info(
            "analysis %d: superseded by a newer generation; %d delivery(ies) not sent",
            request.analysis_id,
            count,
        )
        return TaskOutcome(state=_D.SUPERSEDED.value, outcome="skipped")
    try:
        destination = settings.destination(request.destination)
    except ConfigError as exc:
        _dead(ledger, items, str(exc), None)
        return TaskOutcome(state=_D.FAILED.value, detail=str(exc), outcome="failed")
    label = destination.describe()
    try:
        sent = send(destination, [_outbound(item) for item in items], settings)
    except PermanentDeliveryError as exc:
        _dead(ledger, items, f"{label}: {exc}", exc.status)
        return TaskOutcome(state=_D.FAILED.value, detail=str(exc), outcome="failed")
    except DeliveryError as exc:
        return _retry(task, ledger, settings, items, label, str(exc), exc.status)
    except (OSError, InvalidDicomError) as exc:  # a report file gone or corrupt: dead letter
        reason = f"report file unreadable: {reason_for(exc)}"
        _dead(ledger, items, reason, None)
        return TaskOutcome(state=_D.FAILED.value, detail=reason, outcome="failed")
    return _judge(task, ledger, settings, destination, items, sent)


def _outbound(item: Outgoing) -> Outbound:
    return Outbound(
        delivery_id=item.delivery_id,
        path=Path(item.path),
        sop_class_uid=item.sop_class_uid,
        sop_instance_uid=item.sop_instance_uid,
    )


def _judge(
    task: Task,
    ledger: Ledger,
    settings: Settings,
    destination: Destination,
    items: Sequence[Outgoing],
    sent: Sequence[Sent],
) -> TaskOutcome:
    by_id = {item.delivery_id: item for item in items}
    refused: list[Outgoing] = []
    refused_status = 0
    delivered = dead = 0
    for result in sent:
        item = by_id[result.delivery_id]
        verdict = delivery_verdict(result.status)
        text = result.detail or status_text(result.status)
        if verdict in ("delivered", "warning"):
            ledger.record_delivery_attempt(item.delivery_id, error=None, status=result.status)
            warning = text if verdict == "warning" else None
            ledger.transition_delivery(
                item.delivery_id, _D.DELIVERED, status=result.status, warning=warning
            )
            delivered += 1
            log.info(
                "report %s delivered to %s (%s)",
                item.sop_instance_uid,
                destination.name,
                status_text(result.status),
            )
        elif verdict == "retry":
            refused_status = refused_status or result.status  # the first refusal's status
            refused.append(item)
        else:
            _dead(ledger, [item], f"{destination.describe()}: {text}", result.status)
            dead += 1
    if refused:
        reason = f"{destination.describe()} refused: {status_text(refused_status)}"
        return _retry(task, ledger, settings, refused, destination.name, reason, refused_status)
    state = _D.DELIVERED if delivered else _D.FAILED
    detail = f"{delivered} delivered, {dead} dead letter(s) to {destination.name}"
    return TaskOutcome(state=state.value, detail=detail, outcome="done" if delivered else "failed")


def _retry(
    task: Task,
    ledger: Ledger,
    settings: Settings,
    items: Sequence[Outgoing],
    label: str,
    reason: str,
    status: int | None,
) -> TaskOutcome:
    attempts = max(item.attempts for item in items) + 1
    if attempts >= settings.delivery_max_attempts:
        _dead(ledger, items, f"{reason} (after {attempts} attempts)", status)
        return TaskOutcome(state=_D.FAILED.value, detail=reason, outcome="failed")
    for item in items:
        ledger.record_delivery_attempt(item.delivery_id, error=reason, status=status)
    delay = backoff_seconds(
        attempts - 1, settings.delivery_retry_base_seconds, settings.delivery_retry_max_seconds
    )
    log.warning(
        "delivery of %d report object(s) to %s: attempt %d failed (%s); retrying in %.1f s",
        len(items),
        label,
        attempts,
        reason,
        delay,
    )
    raise task.retry(exc=DeliveryError(reason, status), countdown=delay)


def _dead(ledger: Ledger, items: Sequence[Outgoing], reason: str, status: int | None) -> None:
    for item in items:
        ledger.record_delivery_attempt(item.delivery_id, error=None, status=status)
        ledger.transition_delivery(item.delivery_id, _D.FAILED, last_error=reason, status=status)
        log.error(
            "report %s: dead letter (%s); see `dicom-node exports list`",
            item.sop_instance_uid,
            reason,
        )
