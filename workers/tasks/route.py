"""``route_study``: decide which models run on a complete study, and start one analysis each.

Each analysis gets a priority (:func:`models.priority.study_priority`: the
site's STAT rules on the instances the model runs on, or the manifest's
``serving.priority``). It is kept in the stored message and sent as the
message's Celery priority, so a STAT analysis is taken from ``infer.<model>``
before every routine one waiting there.
"""

from __future__ import annotations

import logging

from celery import Task
from pydicom import Dataset

from dicom_node.core.contract import (
    ANALYZE_TASK,
    Analyze,
    Priority,
    RouteStudy,
    TaskOutcome,
    model_queue,
)
from dicom_node.core.ledger import (
    AnalysisSnapshot,
    AnalysisSpec,
    AnalysisState,
    Ledger,
    StudyState,
)
from models.priority import study_priority
from models.routing import read_headers, route
from workers.context import WorkerContext, current

log = logging.getLogger(__name__)

NO_MODEL = "no applicable model"

PUBLISH_RETRY_POLICY = {
    "max_retries": 60,
    "interval_start": 0.5,
    "interval_step": 1.0,
    "interval_max": 5.0,
}
"""How long an ``analyze`` message waits for the broker: about 5 minutes.

Long on purpose: with the broker gone, ``task.retry`` cannot publish either
(Celery then rejects the message, and the study would stay ``queued``), and
nothing else can run meanwhile anyway.
"""


def route_study(task: Task, request: RouteStudy) -> TaskOutcome:
    """Route a study: one analysis per matching model, each sent to ``infer.<model>``.

    Parameters
    ----------
    task : celery.Task
        The bound task (for its app).
    request : RouteStudy
        Study, generation, spool paths and calling AE.

    Returns
    -------
    TaskOutcome
        ``routed`` with the model ids, ``not_applicable``, or ``skipped`` when
        the study has a newer generation.
    """
    ctx = current()
    ledger = ctx.ledger
    view = ledger.get(request.study_uid)
    if (
        view is None
        or view.study.generation != request.generation
        or view.study.state not in (StudyState.QUEUED, StudyState.ROUTED)
    ):
        log.info(
            "study %s generation %d: superseded or done", request.study_uid, request.generation
        )
        return TaskOutcome(state="superseded", outcome="skipped")
    instances, unreadable = read_headers(request.paths)
    for line in unreadable:
        log.warning("study %s: %s", request.study_uid, line)
    plan = route(ctx.registry, instances, request.calling_ae, enabled=ctx.settings.enabled_models)
    for series_uid, model_id, why in plan.rejections:
        log.info("study %s series %s: not for %s: %s", request.study_uid, series_uid, model_id, why)
    if not plan.matches:
        ledger.transition_study(
            request.study_uid, request.generation, StudyState.NOT_APPLICABLE, reason=NO_MODEL
        )
        log.info("study %s: %s", request.study_uid, NO_MODEL)
        return TaskOutcome(state=StudyState.NOT_APPLICABLE.value, detail=NO_MODEL)
    analyses = ledger.create_analyses(
        request.study_uid,
        request.generation,
        [AnalysisSpec(m.model_id, m.version, len(m.paths)) for m in plan.matches],
    )
    paths = {m.model_id: m.paths for m in plan.matches}
    headers = dict(instances)
    priorities = {
        m.model_id: _priority(ctx, m.model_id, [headers[p] for p in m.paths], request)
        for m in plan.matches
    }
    try:
        for analysis in analyses:
            if analysis.state == AnalysisState.QUEUED:  # not started by an earlier run
                _publish(
                    task,
                    ledger,
                    request,
                    analysis,
                    paths[analysis.model_id],
                    priorities[analysis.model_id],
                )
    except Exception as exc:  # the broker went away mid-way: the study waits, then goes on
        log.warning(
            "study %s: cannot publish its analyses (%s); retrying",
            request.study_uid,
            exc.__class__.__name__,
        )
        raise task.retry(exc=exc, countdown=5, max_retries=None) from exc
    ledger.transition_study(request.study_uid, request.generation, StudyState.ROUTED)
    models = ", ".join(m.model_id for m in plan.matches)
    log.info("study %s routed to %s", request.study_uid, models)
    return TaskOutcome(state=StudyState.ROUTED.value, detail=models)


def _priority(
    ctx: WorkerContext, model_id: str, headers: list[Dataset], request: RouteStudy
) -> Priority:
    manifest = ctx.registry.get(model_id)
    return study_priority(manifest, headers, request.calling_ae, ctx.stat_rules)


def _publish(
    task: Task,
    ledger: Ledger,
    request: RouteStudy,
    analysis: AnalysisSnapshot,
    paths: list[str],
    priority: Priority,
) -> None:
    """Send one ``analyze`` message with its Celery priority, after keeping it in the ledger.

    The stored message (its priority included) is what the SCP's stall
    sweeper (:mod:`dicom_node.ingest.recovery`) publishes again, unchanged,
    if the worker that runs it dies with it.
    """
    payload = Analyze(
        analysis_id=analysis.id,
        study_uid=request.study_uid,
        generation=request.generation,
        model_id=analysis.model_id,
        model_version=analysis.model_version,
        paths=paths,
        priority=priority,
    )
    ledger.record_dispatch(analysis.id, payload.model_dump_json())
    task.app.send_task(
        ANALYZE_TASK,
        kwargs={"request": payload.model_dump(mode="json")},
        task_id=payload.task_id,
        queue=model_queue(analysis.model_id),
        priority=payload.celery_priority,
        retry=True,
        retry_policy=PUBLISH_RETRY_POLICY,
    )
    log.info(
        "study %s: analysis %d (%s) published, priority %s",
        request.study_uid,
        analysis.id,
        analysis.model_id,
        priority,
    )
