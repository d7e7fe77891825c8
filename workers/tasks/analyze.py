"""``analyze``: run one model on its images, write one SR per output profile, start deliveries."""

from __future__ import annotations

import logging
import time

from celery import Task
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO

from dicom_node.core.contract import DELIVER_TASK, DELIVERY_QUEUE, Analyze, Deliver, TaskOutcome
from dicom_node.core.durable import safe_component, write_durably
from dicom_node.core.errors import DicomNodeError, SpoolError
from dicom_node.core.ledger import AnalysisState, DeliveryState
from models.backends import LoadedModel
from models.weights import UNTRAINED_NOTICE
from workers.context import WorkerContext, current
from workers.outputs import PROFILES, build_report
from workers.pipeline.run import Outcome, run_analysis

log = logging.getLogger(__name__)

DISK_RETRY_SECONDS = 60.0


def _fail(ctx: WorkerContext, request: Analyze, exc: Exception) -> TaskOutcome:
    if isinstance(exc, DicomNodeError):
        reason = str(exc)
        log.error("analysis %d (%s): failed: %s", request.analysis_id, request.model_id, reason)
    else:  # exception texts of libraries may quote attribute values: keep the class only
        reason = f"internal error: {exc.__class__.__name__}"
        log.exception("analysis %d (%s): %s", request.analysis_id, request.model_id, reason)
    ctx.ledger.transition_analysis(request.analysis_id, AnalysisState.FAILED, reason=reason)
    return TaskOutcome(state=AnalysisState.FAILED.value, detail=reason, outcome="failed")


def _write(report: Dataset, ctx: WorkerContext) -> str:
    path = ctx.settings.data_dir / "reports" / f"{safe_component(report.SOPInstanceUID)}.dcm"
    buffer = DicomBytesIO()
    report.save_as(buffer, enforce_file_format=True)
    write_durably(path, buffer.getvalue())
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
    skipped = f"; {len(outcome.skipped)} image(s) skipped" if outcome.skipped else ""
    return f"{len(outcome.images)} image(s), {model.backend} on {model.device}, {kind}{skipped}"


def analyze(task: Task, request: Analyze) -> TaskOutcome:
    """Run the analysis's model, write its reports and hand them to ``deliver``.

    Parameters
    ----------
    task : celery.Task
        The bound task (for ``retry`` and its app).
    request : Analyze
        Analysis id, study, model and the spool paths it applies to.

    Returns
    -------
    TaskOutcome
        ``reported``, ``failed`` (with the reason also in the ledger), or
        ``skipped`` when the analysis is done or superseded.

    Raises
    ------
    celery.exceptions.Retry
        When the report cannot be written (disk full): the study waits.
    """
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
        outcome = run_analysis(model, request.paths)
        reports = [
            (profile, build_report(profile, outcome, model, request.study_uid, request.generation))
            for profile in PROFILES
        ]
    except Exception as exc:  # task boundary: every failure becomes a ledger reason
        return _fail(ctx, request, exc)

    try:
        written = [(profile, report, _write(report, ctx)) for profile, report in reports]
    except SpoolError as exc:  # disk full: keep the analysis, try again later
        log.error("analysis %d: cannot write its report (%s); retrying", request.analysis_id, exc)
        ledger.transition_analysis(
            request.analysis_id, AnalysisState.RUNNING, reason=f"report not written: {exc}"
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
    ledger.transition_analysis(
        request.analysis_id,
        AnalysisState.REPORTED,
        reason="; ".join(outcome.skipped) or None,
        backend=model.backend,
        weights_kind=model.weights.kind,
        weights_sha256=model.weights.sha256,
    )
    log.info(
        "analysis %d: study %s, %s: %s; %.2f s (%s)",
        request.analysis_id,
        request.study_uid,
        request.model_id,
        summary,
        time.perf_counter() - started,
        ", ".join(f"{k} {v:.3f}" for k, v in outcome.timings.items()),
    )
    return TaskOutcome(state=AnalysisState.REPORTED.value, detail=summary)
