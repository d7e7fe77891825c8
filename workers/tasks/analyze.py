"""``analyze``: run one model on its images, write one SR per output profile, start deliveries.

One bad image never fails a study: the images that cannot be used are recorded
with their reasons (``Ledger.record_skipped``), shown by ``dicom-node status``
and named in the report, and the model runs on the rest. When no image is
left, the analysis ends ``failed`` with a reason and no report is written.

Nothing this task leaves behind quotes a header value: ledger reasons, log
lines, the returned :class:`~dicom_node.core.contract.TaskOutcome` and any
exception raised out of the task (which Celery stores, with its traceback, in
the result backend) go through :mod:`dicom_node.core.redact`, and pydicom's
and highdicom's warnings are captured while the task runs (one capture shared by
the analyses Celery's threads pool runs at once,
:mod:`workers.pipeline.shared_capture`).

The images go through the worker's preprocessing threads and the model's
batcher (:class:`~workers.batching.DynamicBatcher`), shared with the other
analyses running in this process; a STAT analysis's images are batched first.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from celery import Task
from celery.exceptions import Retry
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO

from dicom_node.core.contract import DELIVER_TASK, DELIVERY_QUEUE, Analyze, Deliver, TaskOutcome
from dicom_node.core.durable import safe_component, write_durably
from dicom_node.core.errors import DicomNodeError, SpoolError
from dicom_node.core.ledger import AnalysisState, DeliveryState
from dicom_node.core.redact import frames, reason_for, scrubbed
from models.backends import LoadedModel
from models.weights import UNTRAINED_NOTICE
from workers.context import WorkerContext, current
from workers.outputs import PROFILES, build_report
from workers.pipeline.run import Outcome, run_analysis
from workers.pipeline.shared_capture import shared_library_warnings

log = logging.getLogger(__name__)

DISK_RETRY_SECONDS = 60.0


def _fail(ctx: WorkerContext, request: Analyze, exc: Exception) -> TaskOutcome:
    reason = reason_for(exc)
    if isinstance(exc, DicomNodeError):
        log.error("analysis %d (%s): failed: %s", request.analysis_id, request.model_id, reason)
    else:  # a library's text may quote attribute values: the class, keywords and frames only
        reason = f"internal error: {reason}"
        log.error(
            "analysis %d (%s): %s\n%s", request.analysis_id, request.model_id, reason, frames(exc)
        )
    ctx.ledger.transition_analysis(request.analysis_id, AnalysisState.FAILED, reason=reason)
    return TaskOutcome(state=AnalysisState.FAILED.value, detail=reason, outcome="failed")


def nothing_analysed(outcome: Outcome) -> str:
    """The reason of an analysis none of whose images could be used.

    Returns
    -------
    str
        ``"none of the 3 images could be analysed: image is constant (blank) (2 of 3)"``.
    """
    total = len(outcome.skipped)
    if not total:
        return "no image to analyse"
    reason, count = Counter(item.reason for item in outcome.skipped).most_common(1)[0]
    noun = "image" if total == 1 else "images"
    return f"none of the {total} {noun} could be analysed: {reason} ({count} of {total})"


def _encode(report: Dataset) -> bytes:
    buffer = DicomBytesIO()
    report.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _write(report: Dataset, data: bytes, ctx: WorkerContext) -> str:
    path = ctx.settings.data_dir / "reports" / f"{safe_component(report.SOPInstanceUID)}.dcm"
    write_durably(path, data)
    return str(path)


def _deliver(task: Task, ctx: WorkerContext, report_id: int, path: str) -> None:
    for delivery in ctx.ledger.add_deliveries(report_id, ctx.settings.destinations):
        if delivery.state == DeliveryState.DELIVERED:
            continue
        payload = Deliver(
            delivery_id=delivery.id, report_path=path, destination=delivery.destination
        )
        task.app.send_task(
            DELIVER_TASK,
            kwargs={"request": payload.model_dump(mode="json")},
            task_id=payload.task_id,
            queue=DELIVERY_QUEUE,
        )


def _summary(model: LoadedModel, outcome: Outcome) -> str:
    kind = "real weights" if model.weights.is_real else UNTRAINED_NOTICE
    skipped = f"; {len(outcome.skipped)} image(s) not analysed" if outcome.skipped else ""
    return f"{len(outcome.images)} image(s), {model.backend} on {model.device}, {kind}{skipped}"


def analyze(task: Task, request: Analyze) -> TaskOutcome:
    """Run the analysis's model, write its reports and hand them to ``deliver``.

    Parameters
    ----------
    task : celery.Task
        The bound task (for ``retry`` and its app).
    request : Analyze
        Analysis id, study, model, the spool paths it applies to and its priority.

    Returns
    -------
    TaskOutcome
        ``reported``, ``failed`` (with the reason also in the ledger; also when
        no image could be analysed), or ``skipped`` when the analysis is done
        or superseded. Its texts quote no header value.

    Raises
    ------
    celery.exceptions.Retry
        When the report cannot be written (disk full): the study waits.
    Exception
        When the ledger itself fails: the exception, its arguments replaced by
        a PHI-free reason and its chain cut (:func:`dicom_node.core.redact.scrubbed`).
    """
    with shared_library_warnings():
        try:
            return _analyze(task, request)
        except Retry:
            raise
        except Exception as exc:  # reaches the result backend: no value may be in it
            log.error(
                "analysis %d (%s): %s\n%s",
                request.analysis_id,
                request.model_id,
                reason_for(exc),
                frames(exc),
            )
            raise scrubbed(exc) from None


def _analyze(task: Task, request: Analyze) -> TaskOutcome:
    ctx = current()
    ledger = ctx.ledger
    if not ledger.transition_analysis(request.analysis_id, AnalysisState.RUNNING):
        log.info("analysis %d: done or superseded; skipping", request.analysis_id)
        return TaskOutcome(state="skipped", outcome="skipped")
    started = time.perf_counter()
    try:
        model = ctx.model(request.model_id)
        if model.manifest.version != request.model_version:
            raise DicomNodeError(
                f"worker has {request.model_id} {model.manifest.version}, "
                f"analysis asked for {request.model_version}"
            )
        outcome = run_analysis(
            model,
            request.paths,
            request.study_uid,
            batcher=ctx.batcher(request.model_id),
            pool=ctx.pool,
            priority=request.priority,
        )
        ledger.record_skipped(request.analysis_id, outcome.skipped)
        if not outcome.images:
            reason = nothing_analysed(outcome)
            log.warning("analysis %d (%s): %s", request.analysis_id, request.model_id, reason)
            ledger.transition_analysis(request.analysis_id, AnalysisState.FAILED, reason=reason)
            return TaskOutcome(state=AnalysisState.FAILED.value, detail=reason, outcome="failed")
        reports = [
            (profile, build_report(profile, outcome, model, request.study_uid, request.generation))
            for profile in PROFILES
        ]
        encoded = [(profile, report, _encode(report)) for profile, report in reports]
    except Exception as exc:  # task boundary: every failure becomes a ledger reason
        return _fail(ctx, request, exc)

    try:
        written = [
            (profile, report, _write(report, data, ctx)) for profile, report, data in encoded
        ]
    except SpoolError as exc:  # disk full: keep the analysis, try again later
        reason = reason_for(exc)
        log.error(
            "analysis %d: cannot write its report (%s); retrying", request.analysis_id, reason
        )
        ledger.transition_analysis(
            request.analysis_id, AnalysisState.RUNNING, reason=f"report not written: {reason}"
        )
        raise task.retry(exc=exc, countdown=DISK_RETRY_SECONDS, max_retries=None) from exc
    for profile, report, path in written:
        row = ledger.add_report(
            request.analysis_id,
            profile,
            str(report.SOPInstanceUID),
            str(report.SeriesInstanceUID),
            path,
        )
        _deliver(task, ctx, row.id, path)
    summary = _summary(model, outcome)
    skipped = len(outcome.skipped)
    total = skipped + len(outcome.images)
    ledger.transition_analysis(
        request.analysis_id,
        AnalysisState.REPORTED,
        reason=f"{skipped} of {total} image(s) not analysed" if skipped else None,
        backend=model.backend,
        weights_kind=model.weights.kind,
        weights_sha256=model.weights.sha256,
    )
    log.info(
        "analysis %d: study %s, %s (%s): %s; %.2f s (%s)",
        request.analysis_id,
        request.study_uid,
        request.model_id,
        request.priority,
        summary,
        time.perf_counter() - started,
        ", ".join(f"{k} {v:.3f}" for k, v in outcome.timings.items()),
    )
    return TaskOutcome(state=AnalysisState.REPORTED.value, detail=summary)
