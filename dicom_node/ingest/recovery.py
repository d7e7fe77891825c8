"""Re-publish analyses stranded by a dead worker, so a crash costs minutes, not hours.

A worker runs ``analyze`` with ``acks_late``: its message stays
unacknowledged in Redis while it runs. When the worker's child process dies,
Celery's main process rejects the message and it is delivered again at once
(``task_reject_on_worker_lost``). When the main process itself dies (kill -9,
OOM killer, power loss of a GPU box), nothing is left to reject it: Redis
hands it out again only after the visibility timeout (hours, see
:data:`~dicom_node.core.contract.VISIBILITY_TIMEOUT_SECONDS`), and the
study would stay ``running`` that long.

The :class:`StallSweeper` runs in the primary SCP process. Every
``min(30 s, analysis_stall_seconds / 4)`` it lists the analyses ``running``
for longer than ``analysis_stall_seconds`` and asks the broker which of their
task ids a live worker holds (executing, reserved or scheduled, by Celery's
``query_task``) or a queue still carries. An analysis that nobody holds is
published again, unchanged and under the same deterministic task id, to
``infer.<model id>``; its clock restarts, so it is re-published at most once
per deadline. ``analyze`` may claim a ``running`` analysis again, writes one
report per profile (insert-or-get, derived UIDs) and so does its work once
however often it is delivered. After ``analysis_max_requeues``
re-publications the analysis is marked ``failed`` (a message that kills
every worker it reaches must not loop forever).

Two looks. One look asks the workers (``query_task`` collects replies for
a second) and then lists the queues. A message a worker takes from its
queue after answering but before the queues are listed is in neither
answer, though a live worker holds it: this happens when a worker restarted
after a crash takes the re-published message during a sweep. So the ids
not held at the first look are asked about again before anything is
re-published: a message can leave its queue for a worker only once, so the
second look sees it held (or its analysis finished, which the ledger
transition then refuses).

Workers run Celery's threads pool: their consumer thread answers remote
control while every pool thread analyses (tests/test_stat_worker.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from pydantic import ValidationError

from dicom_node.core.contract import Analyze, model_queue
from dicom_node.core.errors import DicomNodeError, EnqueueError
from dicom_node.core.ledger import AnalysisState, Ledger, StalledAnalysis
from dicom_node.core.settings import Settings
from dicom_node.ingest.publisher import CeleryBroker

log = logging.getLogger(__name__)

MAX_SWEEP_SECONDS = 30.0


class Broker(Protocol):
    """What the sweeper asks of the broker (see :class:`~.publisher.CeleryBroker`)."""

    def held_task_ids(self, task_queues: Mapping[str, str]) -> set[str]:
        """Ids a live worker holds or a queue carries; raises EnqueueError if unreachable."""

    def publish_analyze(self, payload: Analyze) -> None:
        """Publish an ``analyze`` message; raises EnqueueError if the broker refuses."""


@dataclass(frozen=True)
class SweepResult:
    """What one sweep found and did.

    Attributes
    ----------
    stalled : int
        Analyses ``running`` past the deadline.
    held : int
        Of those, held by a live worker or waiting in a queue (left alone).
    republished : int
        Published again.
    failed : int
        Marked ``failed`` after ``analysis_max_requeues`` re-publications.
    no_payload : int
        Without a stored message (rows older than release 0.3): left alone.
    broker_down : bool
        The broker could not be asked or did not take a message; the rest
        waits for the next sweep.
    """

    stalled: int = 0
    held: int = 0
    republished: int = 0
    failed: int = 0
    no_payload: int = 0
    broker_down: bool = False


class StallSweeper:
    """Finds ``running`` analyses no live worker holds and publishes them again.

    Parameters
    ----------
    ledger : Ledger
        The study ledger.
    settings : Settings
        ``analysis_stall_seconds``, ``analysis_max_requeues`` and ``broker_url``.
    broker : Broker, optional
        Default: a :class:`~dicom_node.ingest.publisher.CeleryBroker`, built on
        first use (so a node without a broker URL fails in the publisher, not here).
    clock : callable, optional
        Epoch seconds (tests).
    """

    def __init__(
        self,
        ledger: Ledger,
        settings: Settings,
        broker: Broker | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.settings = settings
        self.clock = clock
        self._broker = broker
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._noted: set[int] = set()

    @property
    def interval(self) -> float:
        """Seconds between sweeps: a quarter of the stall deadline, at most 30 s."""
        return min(MAX_SWEEP_SECONDS, self.settings.analysis_stall_seconds / 4)

    @property
    def broker(self) -> Broker:
        """The broker (a :class:`~dicom_node.ingest.publisher.CeleryBroker` unless given)."""
        if self._broker is None:
            self._broker = CeleryBroker(self.settings)
        return self._broker

    def sweep(self, now: float | None = None) -> SweepResult:
        """Re-publish or fail every stalled analysis that no live worker holds.

        Parameters
        ----------
        now : float, optional
            Epoch seconds; default the clock. An analysis is stalled when it
            has been ``running`` since before ``now - analysis_stall_seconds``
            (since its last re-publication, if any).

        Returns
        -------
        SweepResult

        Raises
        ------
        LedgerError
            If the ledger cannot be read or written.
        """
        now = self.clock() if now is None else now
        stalled = self.ledger.stalled_analyses(now - self.settings.analysis_stall_seconds)
        if not stalled:
            return SweepResult()
        payloads = self._payloads(stalled)
        no_payload = len(stalled) - len(payloads)
        if not payloads:
            return SweepResult(stalled=len(stalled), no_payload=no_payload)
        wanted = {p.task_id: model_queue(p.model_id) for p in payloads.values()}
        try:
            held = self.broker.held_task_ids(wanted)
            unheld = {task_id: q for task_id, q in wanted.items() if task_id not in held}
            if unheld:  # a second look: see "Two looks" in the module docstring
                held |= self.broker.held_task_ids(unheld)
        except EnqueueError as exc:
            log.warning("stall sweep skipped: cannot ask the broker (%s)", exc)
            return SweepResult(stalled=len(stalled), no_payload=no_payload, broker_down=True)
        republished = failed = 0
        for analysis in stalled:
            payload = payloads.get(analysis.id)
            if payload is None or payload.task_id in held:
                continue
            if analysis.requeues >= self.settings.analysis_max_requeues:
                failed += self._fail(analysis, payload)
                continue
            try:
                republished += self._republish(analysis, payload)
            except EnqueueError as exc:
                log.warning(
                    "analysis %d: cannot publish it again (%s); next sweep", analysis.id, exc
                )
                return SweepResult(
                    len(stalled), len(held), republished, failed, no_payload, broker_down=True
                )
        return SweepResult(len(stalled), len(held), republished, failed, no_payload)

    def _payloads(self, stalled: list[StalledAnalysis]) -> dict[int, Analyze]:
        out: dict[int, Analyze] = {}
        for analysis in stalled:
            problem = "has no stored message (started before release 0.3)"
            if analysis.payload is not None:
                try:
                    out[analysis.id] = Analyze.model_validate_json(analysis.payload)
                    continue
                except ValidationError:
                    problem = "has an unreadable stored message"
            if analysis.id not in self._noted:
                self._noted.add(analysis.id)
                log.warning(
                    "analysis %d is running past its deadline but %s; not re-published",
                    analysis.id,
                    problem,
                )
        return out

    def _fail(self, analysis: StalledAnalysis, payload: Analyze) -> int:
        reason = (
            f"no worker finished it: its worker was lost {analysis.requeues + 1} times "
            f"(DICOM_NODE_ANALYSIS_MAX_REQUEUES={self.settings.analysis_max_requeues})"
        )
        if not self.ledger.transition_analysis(analysis.id, AnalysisState.FAILED, reason=reason):
            return 0
        log.error(
            "analysis %d (%s, study %s) failed: %s",
            analysis.id,
            payload.model_id,
            payload.study_uid,
            reason,
        )
        return 1

    def _republish(self, analysis: StalledAnalysis, payload: Analyze) -> int:
        attempt = analysis.requeues + 1
        if not self.ledger.requeue_analysis(
            analysis.id, f"re-published: worker lost (attempt {attempt})"
        ):
            return 0  # it finished meanwhile
        self.broker.publish_analyze(payload)
        log.warning(
            "analysis %d (%s, study %s): no live worker holds task %s after %.0f s; "
            "published again (attempt %d of %d)",
            analysis.id,
            payload.model_id,
            payload.study_uid,
            payload.task_id,
            self.settings.analysis_stall_seconds,
            attempt,
            self.settings.analysis_max_requeues,
        )
        return 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sweep()
            except DicomNodeError as exc:
                log.error("stall sweeper: %s", exc)
            except Exception:
                log.exception("stall sweeper: unexpected error")

    def start(self) -> None:
        """Start the background thread."""
        self._thread = threading.Thread(target=self._run, name="stall-sweeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it (a sweep in progress finishes first)."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=15)
