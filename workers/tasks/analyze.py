"""The task chain of a study: ``analyze_study`` → ``deliver_report``.

::

    SCP (completion monitor) ──send_task──▶ analyze_study   queue infer.<model_id>
        claim (queued → inferring) → select → decode → preprocess → infer
        → build SR → write durably to <data_dir>/reports → reported
        ──apply_async──▶ deliver_report                     queue delivery
        C-STORE to the PACS (or copy to the outbox) → delivered
        on failure: retry with exponential back-off, capped, never dropped

Both tasks are idempotent: they act only if the study is still at the
generation they were given and in a state they may leave, and report UIDs are
deterministic. Arguments are JSON (paths and UIDs, never pixel data).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from celery import Task
from celery.signals import worker_process_init
from pydicom.filebase import DicomBytesIO

from dicom_node.core.settings import Settings, load_settings
from dicom_node.core.errors import DeliveryError, DicomNodeError, SpoolError
from dicom_node.core.ledger import Ledger, StudyState
from dicom_node.core.durable import safe_component, write_durably
from models.manifest import Manifest, ModelRegistry
from models.backends.runtime import LoadedModel, load_model
from models.weights.store.store import UNTRAINED_NOTICE, resolve_weights
from workers.app import app
from workers.destinations.c_store import c_store, to_outbox
from workers.pipeline.run.run import analyze, warm_up
from dicom_node.core.contract import ANALYZE_TASK, DELIVER_TASK, DELIVERY_QUEUE

log = logging.getLogger(__name__)


class WorkerContext:
    """What one worker process holds: settings, ledger, manifests and the loaded model.

    Parameters
    ----------
    settings : Settings
        Worker settings (from the environment).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ledger = Ledger(settings.resolved_ledger_url)
        self.registry = ModelRegistry.from_directory()
        self._model: LoadedModel | None = None
        self._lock = threading.Lock()

    @property
    def manifest(self) -> Manifest:
        """Manifest of the configured model."""
        return self.registry.get(self.settings.model_id)

    def model(self) -> LoadedModel:
        """Load (once) and return the model; raises WeightsUnavailableError without weights."""
        with self._lock:
            if self._model is None:
                weights = resolve_weights(
                    self.manifest,
                    self.settings.resolved_models_dir,
                    self.settings.allow_demo_weights,
                )
                if not weights.is_real:
                    log.warning("model %s: serving %s", self.manifest.id, UNTRAINED_NOTICE)
                self._model = load_model(
                    self.manifest,
                    weights,
                    self.settings.resolved_models_dir,
                    self.settings.inference_backend,
                )
            return self._model


_context: WorkerContext | None = None


def context() -> WorkerContext:
    """The process's :class:`WorkerContext`, created on first use."""
    global _context
    if _context is None:
        _context = WorkerContext(load_settings())
    return _context


@worker_process_init.connect
def _warm_up(**_: Any) -> None:
    """Load the model when a worker process starts, so the first study does not wait."""
    try:
        warm_up(context().model())
    except DicomNodeError as exc:  # no weights, bad engine: each study will say so too
        log.error("model warm-up: %s", exc)


@app.task(name=ANALYZE_TASK, bind=True, acks_late=True)
def analyze_study(self: Task, study_uid: str, generation: int, paths: list[str]) -> dict[str, Any]:
    """Run the model on a study and write its SR; then hand it to ``deliver_report``.

    Parameters
    ----------
    study_uid : str
        Study Instance UID.
    generation : int
        Ledger generation this task acts on.
    paths : list of str
        Spool files of the study.

    Returns
    -------
    dict
        ``{"state": ..., ...}`` (JSON) for the result backend.
    """
    ctx = context()
    ledger = ctx.ledger
    if not ledger.transition(
        study_uid,
        generation,
        StudyState.INFERRING,
        allowed_from=[StudyState.QUEUED, StudyState.INFERRING, StudyState.RECEIVING],
        model_id=ctx.settings.model_id,
    ):
        log.info("study %s generation %d: superseded or done; skipping", study_uid, generation)
        return {"state": "skipped"}
    try:
        result = analyze(study_uid, generation, paths, ctx.manifest, ctx.model)
    except Exception as exc:  # task boundary: every failure becomes a ledger reason
        reason = str(exc) if isinstance(exc, DicomNodeError) else f"internal error: {exc!r}"
        log.error(
            "study %s: failed: %s", study_uid, reason, exc_info=not isinstance(exc, DicomNodeError)
        )
        ledger.transition(
            study_uid,
            generation,
            StudyState.FAILED,
            allowed_from=[StudyState.INFERRING],
            reason=reason,
        )
        return {"state": StudyState.FAILED.value, "reason": reason}
    if result.report is None:
        ledger.transition(
            study_uid,
            generation,
            StudyState.NOT_APPLICABLE,
            allowed_from=[StudyState.INFERRING],
            reason=result.reason,
        )
        log.info("study %s: %s", study_uid, result.reason)
        return {"state": StudyState.NOT_APPLICABLE.value, "reason": result.reason}

    report_uid = str(result.report.SOPInstanceUID)
    report_path = ctx.settings.data_dir / "reports" / f"{safe_component(report_uid)}.dcm"
    try:
        buffer = DicomBytesIO()
        result.report.save_as(buffer, enforce_file_format=True)
        write_durably(report_path, buffer.getvalue())
    except SpoolError as exc:  # disk full: keep the study, try again later
        log.error("study %s: cannot write SR %s (%s); retrying in 60 s", study_uid, report_uid, exc)
        ledger.note(study_uid, generation, reason=f"report not written: {exc}")
        raise self.retry(exc=exc, countdown=60, max_retries=None) from exc
    present = [f.label.name for f in result.findings if f.present]
    log.info(
        "study %s: SR %s with %d findings (%d present), weights=%s, timings %s",
        study_uid,
        report_uid,
        len(result.findings),
        len(present),
        "real" if result.weights and result.weights.is_real else UNTRAINED_NOTICE,
        {k: round(v, 3) for k, v in result.timings.items()},
    )
    if not ledger.transition(
        study_uid,
        generation,
        StudyState.REPORTED,
        allowed_from=[StudyState.INFERRING],
        report_uid=report_uid,
        report_path=str(report_path),
        weights_kind=result.weights.kind if result.weights else None,
    ):
        log.info("study %s: generation %d superseded during inference", study_uid, generation)
    app.send_task(
        DELIVER_TASK,
        kwargs={"study_uid": study_uid, "generation": generation, "report_path": str(report_path)},
        task_id=f"deliver:{study_uid}:{generation}",
        queue=DELIVERY_QUEUE,
    )
    return {"state": StudyState.REPORTED.value, "report_uid": report_uid}


def backoff_seconds(retries: int, base: float, cap: float) -> float:
    """Exponential back-off: ``min(cap, base * 2**retries)`` seconds."""
    return float(min(cap, base * (2 ** min(retries, 32))))


@app.task(name=DELIVER_TASK, bind=True, acks_late=True, max_retries=None)
def deliver_report(self: Task, study_uid: str, generation: int, report_path: str) -> dict[str, Any]:
    """Send a study's SR to the PACS (or the outbox), retrying until it is accepted.

    Parameters
    ----------
    study_uid : str
        Study Instance UID.
    generation : int
        Ledger generation of the report.
    report_path : str
        The SR file in ``<data_dir>/reports``.

    Returns
    -------
    dict
        ``{"state": "delivered", "destination": ...}``.
    """
    ctx = context()
    settings = ctx.settings
    path = Path(report_path)
    peer = settings.pacs_peer
    ctx.ledger.count_delivery_attempt(study_uid, generation)
    try:
        if peer is None:
            destination = f"outbox:{to_outbox(path, settings.data_dir / 'outbox')}"
        else:
            c_store(
                path,
                peer,
                settings.ae_title,
                settings.acse_timeout,
                settings.dimse_timeout,
                settings.network_timeout,
            )
            destination = str(peer)
    except (DeliveryError, OSError) as exc:
        delay = backoff_seconds(
            self.request.retries,
            settings.delivery_retry_base_seconds,
            settings.delivery_retry_max_seconds,
        )
        log.warning(
            "study %s: delivery attempt %d failed (%s); retrying in %.1f s",
            study_uid,
            self.request.retries + 1,
            exc,
            delay,
        )
        ctx.ledger.note(study_uid, generation, reason=f"delivery pending: {exc}")
        raise self.retry(exc=exc, countdown=delay) from exc
    ctx.ledger.transition(
        study_uid,
        generation,
        StudyState.DELIVERED,
        allowed_from=[StudyState.REPORTED, StudyState.DELIVERED],
        destination=destination,
        reason=None,
    )
    return {"state": StudyState.DELIVERED.value, "destination": destination}
