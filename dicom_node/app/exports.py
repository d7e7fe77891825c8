"""``dicom-node exports list | retry | drop``: the dead letters of report delivery.

A dead letter is a delivery (one report object to one destination) that failed
for good: an error status (0xA9xx, 0xCxxx ...), or the last of
``DICOM_NODE_DELIVERY_MAX_ATTEMPTS`` attempts refused or unanswered. It stays
``failed`` in the ledger until an operator acts:

- ``list`` shows them, one line each (UIDs, AE titles and statuses only: the
  ledger holds no patient data);
- ``retry`` moves them back to ``pending`` and publishes one ``deliver`` task per
  (analysis, destination) to the broker, under its deterministic task id, the
  way ``analyze`` does (:class:`dicom_node.core.contract.Deliver`);
- ``drop`` gives them up (``dropped``: never sent, still listed by ``list --all``).

Nothing is lost on a broker outage: ``retry`` first checks that the broker
answers (if not, nothing is reopened), then reopens, then publishes. Should the
broker fail between the two, the reopened deliveries stay ``pending`` and the
command names them: ``retry`` of the same ids publishes ``pending`` ones again.

Exit statuses: 0 done, 1 nothing matched (or the operator declined), 2 a usage
error, a configuration error or the broker unreachable.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from dicom_node.core.contract import DELIVER_TASK, DELIVERY_QUEUE, Deliver
from dicom_node.core.dimse import status_text
from dicom_node.core.errors import EnqueueError
from dicom_node.core.ledger import DeadLetter, DeliveryState, Ledger
from dicom_node.core.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

EVERY = 1_000_000
"""``limit`` that lists every dead letter of a ledger."""

DONE, NOTHING, ERROR = 0, 1, 2
"""Exit statuses: done; nothing matched or declined; usage, configuration or broker error."""

Say = Callable[[str], None]


@dataclass(frozen=True)
class Selection:
    """Which dead letters a ``retry`` or ``drop`` acts on: exactly one of the three.

    Attributes
    ----------
    ids : tuple of int
        Delivery ids as ``list`` shows them.
    every : bool
        ``--all``: every dead letter.
    destination : str or None
        ``--destination NAME``: the dead letters of one destination.
    """

    ids: tuple[int, ...] = ()
    every: bool = False
    destination: str | None = None

    def usage_error(self) -> str | None:
        """Why this selection is not exactly one of ids, ``--all``, ``--destination``; or None."""
        given = sum((bool(self.ids), self.every, self.destination is not None))
        if given == 1:
            return None
        return "give delivery ids, --all or --destination NAME (exactly one)"

    def pick(self, letters: Sequence[DeadLetter]) -> list[DeadLetter]:
        """The dead letters it selects among ``letters``."""
        if self.ids:
            wanted = set(self.ids)
            return [dl for dl in letters if dl.delivery_id in wanted]
        if self.destination is not None:
            return [dl for dl in letters if dl.destination == self.destination]
        return list(letters) if self.every else []


# -- list ---------------------------------------------------------------------------------


def _when(epoch: float | None) -> str:
    return dt.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S") if epoch else "-"


def _status(status: int | None) -> str:
    return "-" if status is None else status_text(status)


def letter_line(dl: DeadLetter) -> str:
    """One dead letter on one line.

    ``<delivery id>  <destination>  study <UID> generation <n>  <model>  <profile>
    <SOP Instance UID>  status <text>  <n> attempt(s)  <when>  [dropped]  last error: <text>``;
    ``when`` is the last attempt, local time.
    """
    attempts = f"{dl.attempts} attempt{'' if dl.attempts == 1 else 's'}"
    parts = [
        str(dl.delivery_id),
        dl.destination,
        f"study {dl.study_uid} generation {dl.generation}",
        dl.model_id,
        dl.profile,
        dl.sop_instance_uid,
        f"status {_status(dl.status)}",
        attempts,
        _when(dl.last_attempt_at),
    ]
    if dl.state is not DeliveryState.FAILED:
        parts.append(dl.state.value)
    return "  ".join(parts) + f"  last error: {dl.last_error or '-'}"


def letter_json(dl: DeadLetter) -> dict[str, Any]:
    """One dead letter as a JSON-ready dict (``status``: int or None; ``status_text``: str)."""
    return {
        "delivery_id": dl.delivery_id,
        "destination": dl.destination,
        "study_uid": dl.study_uid,
        "generation": dl.generation,
        "model_id": dl.model_id,
        "profile": dl.profile,
        "sop_instance_uid": dl.sop_instance_uid,
        "state": dl.state.value,
        "status": dl.status,
        "status_text": _status(dl.status),
        "attempts": dl.attempts,
        "last_error": dl.last_error,
        "last_attempt_at": dl.last_attempt_at,
    }


def render_list(letters: Sequence[DeadLetter]) -> str:
    """``exports list`` text: a line per dead letter, newest first; ``no dead letters`` if none."""
    if not letters:
        return "no dead letters"
    return "\n".join(letter_line(dl) for dl in letters)


# -- broker -------------------------------------------------------------------------------


class DeliverPublisher:
    """Publishes ``deliver`` tasks by name over the SCP's publish-only Celery app.

    Parameters
    ----------
    settings : Settings
        Needs ``broker_url``; without it, the embedded Redis that ``dicom-node up``
        started for the same data directory is used.

    Raises
    ------
    ConfigError
        If no broker URL is configured and ``up`` is not running here.
    """

    def __init__(self, settings: Settings) -> None:
        from dicom_node.app.supervisor import embedded_broker_url
        from dicom_node.ingest.publisher import publisher_app

        if not settings.broker_url:
            url = embedded_broker_url(settings.data_dir)
            if url:
                settings = settings.model_copy(update={"broker_url": url})
        self.app: Celery = publisher_app(settings)

    def check(self) -> None:
        """Make sure the broker answers.

        Raises
        ------
        EnqueueError
            If it cannot be reached.
        """
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, interval_start=0.2, timeout=5.0)
        except Exception as exc:  # kombu and redis-py raise several connection error types
            raise EnqueueError(f"{exc.__class__.__name__}: {exc}") from exc

    def publish(self, payload: Deliver) -> None:
        """Publish one ``deliver`` task to the ``delivery`` queue under its deterministic id.

        Raises
        ------
        EnqueueError
            If the broker does not take it.
        """
        from dicom_node.ingest.publisher import send_by_name

        request = payload.model_dump(mode="json")
        send_by_name(self.app, DELIVER_TASK, request, payload.task_id, DELIVERY_QUEUE)

    def close(self) -> None:
        """Release the broker connections."""
        self.app.close()


# -- retry / drop -------------------------------------------------------------------------


def _ids(values: Sequence[int]) -> str:
    return " ".join(str(v) for v in sorted(values))


def _retryable(ledger: Ledger, ids: Sequence[int]) -> list[int]:
    """The ids of ``failed`` deliveries, and of ``pending`` ones (a retry whose publish failed)."""
    open_ = (DeliveryState.FAILED, DeliveryState.PENDING)
    found = [ledger.get_delivery(i) for i in dict.fromkeys(ids)]
    return [d.id for d in found if d is not None and d.state in open_]


def retry(
    ledger: Ledger,
    settings: Settings,
    selection: Selection,
    out: Say,
    err: Say,
    publisher: Callable[[Settings], DeliverPublisher] = DeliverPublisher,
) -> int:
    """Send dead letters again: reopen them as ``pending`` and publish their ``deliver`` tasks.

    Parameters
    ----------
    ledger : Ledger
        The node's ledger.
    settings : Settings
        For the broker URL and the configured destinations.
    selection : Selection
        Which dead letters. Explicit ids also republish deliveries that are
        already ``pending`` (a previous ``retry`` whose publish failed).
    out, err : callable
        Print one line to stdout / stderr.
    publisher : callable, optional
        Builds the publisher (tests).

    Returns
    -------
    int
        0: every (analysis, destination) published; 1: nothing matched; 2:
        usage error, no broker configured, or the broker unreachable (before
        reopening: nothing changed; after: the reopened ids are named).
    """
    problem = selection.usage_error()
    if problem:
        err(f"dicom-node exports retry: error: {problem}")
        return ERROR
    chosen = selection.pick(ledger.dead_letters(limit=EVERY))
    targets = (
        _retryable(ledger, selection.ids) if selection.ids else [dl.delivery_id for dl in chosen]
    )
    skipped = sorted(set(selection.ids) - set(targets))
    if skipped:
        err(f"not dead letters (neither failed nor pending), left alone: {_ids(skipped)}")
    if not targets:
        out("no dead letters match")
        return NOTHING
    configured = {d.name for d in settings.report_destinations}
    for name in sorted({dl.destination for dl in chosen} - configured):
        err(f"warning: destination {name!r} is not configured here; its worker decides")
    broker = publisher(settings)
    try:
        try:
            broker.check()
        except EnqueueError as exc:
            err(f"dicom-node exports retry: error: broker unreachable ({exc}); nothing reopened")
            return ERROR
        pairs = ledger.reopen_dead_letters(targets)
        if not pairs:  # delivered or dropped since we looked
            out("no dead letters match")
            return NOTHING
        sent: list[str] = []
        for analysis_id, destination in pairs:
            payload = Deliver(analysis_id=analysis_id, destination=destination)
            try:
                broker.publish(payload)
            except EnqueueError as exc:
                err(
                    f"dicom-node exports retry: error: broker unreachable ({exc}); "
                    f"published {len(sent)} of {len(pairs)} deliver task(s). Deliveries "
                    f"{_ids(targets)} are pending and will be sent once published: run "
                    f"`dicom-node exports retry {_ids(targets)}` again when the broker is up"
                )
                return ERROR
            sent.append(payload.task_id)
    finally:
        broker.close()
    out(f"{len(targets)} delivery(ies) pending again; published {len(sent)} deliver task(s):")
    for task_id in sent:
        out(f"  {task_id}")
    return DONE


def tty_confirm(question: str, stdin: IO[str] | None = None) -> bool | None:
    """Ask a yes/no question on the terminal.

    Returns
    -------
    bool or None
        The answer (``y``/``yes``), or None when stdin is not a terminal.
    """
    stream = stdin or sys.stdin
    if not stream.isatty():
        return None
    print(f"{question} [y/N] ", end="", flush=True)
    return stream.readline().strip().lower() in ("y", "yes")


def drop(
    ledger: Ledger,
    selection: Selection,
    yes: bool,
    out: Say,
    err: Say,
    confirm: Callable[[str], bool | None] = tty_confirm,
) -> int:
    """Give dead letters up: they move to ``dropped`` and are never sent.

    Parameters
    ----------
    ledger : Ledger
        The node's ledger.
    selection : Selection
        Which dead letters (only ``failed`` ones are dropped).
    yes : bool
        Do not ask.
    out, err : callable
        Print one line to stdout / stderr.
    confirm : callable, optional
        Asks the question; None when it cannot (stdin not a terminal).

    Returns
    -------
    int
        0 dropped; 1 nothing matched or the operator declined; 2 usage error,
        or no ``--yes`` while stdin is not a terminal.
    """
    problem = selection.usage_error()
    if problem:
        err(f"dicom-node exports drop: error: {problem}")
        return ERROR
    chosen = selection.pick(ledger.dead_letters(limit=EVERY))
    if not chosen:
        out("no dead letters match")
        return NOTHING
    ids = [dl.delivery_id for dl in chosen]
    if not yes:
        answer = confirm(f"Drop {len(ids)} dead letter(s) ({_ids(ids)})? They will never be sent.")
        if answer is None:
            err("dicom-node exports drop: error: stdin is not a terminal; add --yes to drop")
            return ERROR
        if not answer:
            out("nothing dropped")
            return NOTHING
    count = ledger.drop_dead_letters(ids)
    out(f"dropped {count} dead letter(s)")
    return DONE if count else NOTHING
