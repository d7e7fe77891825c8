"""Study completion: after a quiet period, publish exactly one ``route_study`` task per study.

A background thread polls the ledger. A study in ``receiving`` whose last
instance arrived ``study_quiet_seconds`` ago is moved to ``queued`` (only if
no instance arrived meanwhile), its instance paths are read, and one task is
published by name. If the broker refuses, the study goes back to
``receiving`` and is tried on the next tick: work waits, it is not dropped.
"""

from __future__ import annotations

import logging
import threading
import time

from dicom_node.core.contract import RouteStudy
from dicom_node.core.errors import DicomNodeError, EnqueueError
from dicom_node.core.ledger import Ledger, StudyState
from dicom_node.ingest.publisher import Publish

log = logging.getLogger(__name__)


class CompletionMonitor:
    """Finds quiet studies and hands each to the queue once.

    Parameters
    ----------
    ledger : Ledger
        The study ledger.
    publish : Publish
        Publishes the task; raises :class:`EnqueueError` when the broker is down.
    quiet_seconds : float
        Quiet period after the last instance, seconds.
    poll_seconds : float, optional
        Polling interval, seconds. Default: a quarter of the quiet period, at most 1 s.
    """

    def __init__(
        self,
        ledger: Ledger,
        publish: Publish,
        quiet_seconds: float,
        poll_seconds: float | None = None,
    ) -> None:
        self.ledger = ledger
        self.publish = publish
        self.quiet_seconds = quiet_seconds
        self.poll_seconds = poll_seconds or min(1.0, quiet_seconds / 4)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self, now: float | None = None) -> int:
        """Publish every study that is due; return how many were published."""
        now = time.time() if now is None else now
        cutoff = now - self.quiet_seconds
        sent = 0
        for study_uid, generation in self.ledger.due_studies(self.quiet_seconds, now):
            if not self.ledger.transition_study(
                study_uid, generation, StudyState.QUEUED, received_before=cutoff, task_id=None
            ):
                continue  # an instance arrived meanwhile
            study = self.ledger.get(study_uid)
            payload = RouteStudy(
                study_uid=study_uid,
                generation=generation,
                paths=self.ledger.instance_paths(study_uid),
                calling_ae=study.study.calling_ae if study else None,
            )
            try:
                self.publish(payload)
            except EnqueueError as exc:
                log.warning("study %s: broker refused the task (%s); will retry", study_uid, exc)
                self.ledger.transition_study(
                    study_uid,
                    generation,
                    StudyState.RECEIVING,
                    reason=f"waiting for broker: {exc}",
                )
                break
            self.ledger.transition_study(
                study_uid, generation, StudyState.QUEUED, task_id=payload.task_id, reason=None
            )
            log.info(
                "study %s complete: %d instances, task %s",
                study_uid,
                len(payload.paths),
                payload.task_id,
            )
            sent += 1
        return sent

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.tick()
            except DicomNodeError as exc:
                log.error("completion monitor: %s", exc)
            except Exception:
                log.exception("completion monitor: unexpected error")

    def start(self) -> None:
        """Reopen studies whose task was never sent, then start the polling thread."""
        reopened = self.ledger.reopen_unsent()
        if reopened:
            log.warning("%d queued studies had no task after a restart; enqueueing again", reopened)
        self._thread = threading.Thread(target=self._run, name="study-completion", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the polling thread and wait for it."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
