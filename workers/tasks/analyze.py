"""``analyze``: run one model on its images, write its reports, start their deliveries.

The destinations that take the study (:mod:`workers.destinations.select`) name
the output profiles to build; each profile's objects get deterministic UIDs and
reference the reports of earlier generations that already went out
(superseding). The reports are recorded, then the analysis moves to
``reported`` only if its generation is still current; otherwise its deliveries
become ``superseded`` and nothing is sent. Then one ``deliver`` task per
destination sends that destination's objects together.

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
from collections.abc import Iterable
from dataclasses import dataclass

from celery import Task
from celery.exceptions import Retry
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO

from dicom_node.core.contract import DELIVER_TASK, DELIVERY_QUEUE, Analyze, Deliver, TaskOutcome
from dicom_node.core.destinations import Destination
from dicom_node.core.durable import safe_component, write_durably
from dicom_node.core.errors import DicomNodeError, ReportError, SpoolError
from dicom_node.core.ledger import AnalysisState
from dicom_node.core.redact import frames, reason_for, scrubbed
from models.backends import LoadedModel
from models.weights import UNTRAINED_NOTICE
from workers.context import WorkerContext, current
from workers.destinations.select import destinations_for, profiles_for
from workers.outputs import EXPLAINED_PROFILES, build
from workers.outputs.findings import report_input
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


@dataclass(frozen=True)
class _Built:
    """One report object: its profile, position in the profile, dataset and bytes."""

    profile: str
    ordinal: int
    report: Dataset
    data: bytes


def publish_deliveries(task: Task, analysis_id: int, destinations: Iterable[str]) -> None:
    """Publish one ``deliver`` task per destination of an analysis's reports.

    Parameters
    ----------
    task : celery.Task
        Any bound task (for its app).
    analysis_id : int
        The analysis whose open deliveries are sent.
    destinations : iterable of str
        Destination names.
    """
    for name in destinations:
        payload = Deliver(analysis_id=analysis_id, destination=name)
        task.app.send_task(
            DELIVER_TASK,
            kwargs={"request": payload.model_dump(mode="json")},
            task_id=payload.task_id,
            queue=DELIVERY_QUEUE,
        )


def _targets(ctx: WorkerContext, request: Analyze, outcome: Outcome) -> list[Destination]:
    headers = [image.header for image in outcome.images]
    return destinations_for(ctx.routes, headers, ctx.ledger.calling_ae(request.study_uid))


def _build_all(
    ctx: WorkerContext,
    request: Analyze,
    model: LoadedModel,
    outcome: Outcome,
    profiles: list[str],
) -> tuple[list[_Built], list[str]]:
    """Build every profile's objects; a profile that fails is reported, the others go on."""
    priors = ctx.ledger.prior_reports(request.study_uid, request.model_id, request.generation)
    explainer = None
    if EXPLAINED_PROFILES & set(profiles):
        from workers.pipeline.explain import explainer_for

        explainer = explainer_for(model, outcome.images)
    inp = report_input(
        outcome,
        model,
        request.study_uid,
        request.generation,
        predecessors=priors,
        explainer=explainer,
    )
    built: list[_Built] = []
    failed: list[str] = []
    for profile in profiles:
        try:
            objects = build(profile, inp)
            built += [_Built(profile, i, ds, _encode(ds)) for i, ds in enumerate(objects)]
        except Exception as exc:  # one profile's failure never holds the others back
            reason = reason_for(exc)
            log.error(
                "analysis %d (%s): profile %s not built: %s\n%s",
                request.analysis_id,
                request.model_id,
                profile,
                reason,
                frames(exc),
            )
            failed.append(f"{profile}: {reason}")
    return built, failed


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


def _resume_deliveries(task: Task, ctx: WorkerContext, analysis_id: int) -> None:
    """A redelivered ``analyze`` of a finished analysis: publish its unsent deliveries again.

    Covers a worker that died between recording the reports and publishing
    ``deliver`` (each ``deliver`` is idempotent, so publishing twice is harmless),
    and one that died before marking a superseded analysis's deliveries
    ``superseded`` (they are marked now, never sent).
    """
    analysis = ctx.ledger.get_analysis(analysis_id)
    done = (AnalysisState.REPORTED, AnalysisState.SUPERSEDED)
    if analysis is None or analysis.state not in done:
        log.info("analysis %d: done; skipping", analysis_id)
        return
    # Superseded: also one whose worker died after recording its reports and before
    # marking their deliveries superseded; they must not stay pending.
    superseded = analysis.state == AnalysisState.SUPERSEDED
    if superseded or not ctx.ledger.analysis_is_current(analysis_id):
        ctx.ledger.supersede_deliveries(analysis_id)
        log.info("analysis %d: superseded; its deliveries are not sent", analysis_id)
        return
    open_ = ctx.ledger.open_destinations(analysis_id)
    log.info("analysis %d: already reported; deliveries to %s published again", analysis_id, open_)
    publish_deliveries(task, analysis_id, open_)


def _analyze(task: Task, request: Analyze) -> TaskOutcome:
    ctx = current()
    ledger = ctx.ledger
    if not ledger.transition_analysis(request.analysis_id, AnalysisState.RUNNING):
        _resume_deliveries(task, ctx, request.analysis_id)
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
        targets = _targets(ctx, request, outcome)
        built, not_built = _build_all(ctx, request, model, outcome, profiles_for(targets))
        if not built and not_built:
            raise ReportError("no report could be built: " + "; ".join(not_built))
    except Exception as exc:  # task boundary: every failure becomes a ledger reason
        return _fail(ctx, request, exc)

    try:
        written = [(item, _write(item.report, item.data, ctx)) for item in built]
    except SpoolError as exc:  # disk full: keep the analysis, try again later
        reason = reason_for(exc)
        log.error(
            "analysis %d: cannot write its report (%s); retrying", request.analysis_id, reason
        )
        ledger.transition_analysis(
            request.analysis_id, AnalysisState.RUNNING, reason=f"report not written: {reason}"
        )
        raise task.retry(exc=exc, countdown=DISK_RETRY_SECONDS, max_retries=None) from exc
    for item, path in written:
        row = ledger.add_report(
            request.analysis_id,
            item.profile,
            str(item.report.SOPInstanceUID),
            str(item.report.SeriesInstanceUID),
            path,
            sop_class_uid=str(item.report.SOPClassUID),
            ordinal=item.ordinal,
        )
        ledger.add_deliveries(row.id, [d.name for d in targets if item.profile in d.profiles])
    summary = _summary(model, outcome)
    skipped = len(outcome.skipped)
    total = skipped + len(outcome.images)
    notes = [f"{skipped} of {total} image(s) not analysed"] if skipped else []
    notes += [f"not built: {text}" for text in not_built]
    if not targets:
        notes.append("no destination takes this study")
    reported = ledger.transition_analysis(
        request.analysis_id,
        AnalysisState.REPORTED,
        reason="; ".join(notes) or None,
        backend=model.backend,
        weights_kind=model.weights.kind,
        weights_sha256=model.weights.sha256,
    )
    if not reported:  # a newer generation arrived while this one ran: never send it
        dropped = ledger.supersede_deliveries(request.analysis_id)
        log.info(
            "analysis %d (%s): superseded while it ran; %d delivery(ies) not sent",
            request.analysis_id,
            request.model_id,
            dropped,
        )
        return TaskOutcome(state=AnalysisState.SUPERSEDED.value, outcome="skipped")
    publish_deliveries(task, request.analysis_id, ledger.open_destinations(request.analysis_id))
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
