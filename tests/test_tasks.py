"""The task chain with a real Redis broker and real ledger, each task run in this process.

Celery's ``Task.apply`` runs a registered task here (its pydantic payload
validated as a worker would), while the tasks it starts are published to the
real Redis. So these tests can stop a task half-way, run it again as
``acks_late`` would after a worker died, and count what came out.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from pydicom import dcmread

from dicom_node.app.samples import mixed_study
from dicom_node.core.contract import (
    ANALYZE_TASK,
    DELIVERY_QUEUE,
    ROUTE_QUEUE,
    ROUTE_TASK,
    Analyze,
    Priority,
    RouteStudy,
    model_queue,
)
from dicom_node.core.ledger import (
    AnalysisSpec,
    AnalysisState,
    InstanceRecord,
    Ledger,
    StudyState,
)
from dicom_node.core.settings import Settings
from tests.conftest import queued_messages
from workers.app import create_app, worker_queues
from workers.context import WorkerContext, init_context

CHEST = "xrv-densenet121-res224-all"


class WorkerKilledError(Exception):
    """Stands in for the worker being killed at a chosen point (not a DicomNodeError)."""


def task_chain(
    tmp_path: Path, redis_url: str, models_dir: Path, model: str, *, with_results: bool
) -> tuple[Celery, WorkerContext, redis.Redis]:
    """The real Celery app and worker context for ``model``, on a Redis database of its own."""
    db = int(tmp_path.stat().st_ino % 15) + 1  # a Redis database of its own per test
    url = redis_url.rsplit("/", 1)[0] + f"/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    settings = Settings(
        data_dir=tmp_path / "node",
        models_dir=models_dir,
        broker_url=url,
        allow_demo_weights=True,
        models=model,
    )
    ctx = init_context(settings)
    return create_app(settings, with_results=with_results), ctx, client


@pytest.fixture()
def chain(
    tmp_path: Path, redis_url: str, models_dir: Path
) -> Iterator[tuple[Celery, WorkerContext, redis.Redis]]:
    app, ctx, client = task_chain(tmp_path, redis_url, models_dir, CHEST, with_results=False)
    yield app, ctx, client
    ctx.ledger.dispose()
    client.flushdb()


def record_queued(
    ctx: WorkerContext, study_uid: str, paths: list[str], sop_class: str | None = None
) -> None:
    """Record a study's files in the ledger and queue generation 1, as the SCP does.

    ``sop_class`` replaces each file's SOP Class UID (for files whose header lacks one).
    """
    for path in paths:
        ds = dcmread(path, stop_before_pixels=True)
        ctx.ledger.record_instance(
            InstanceRecord(
                study_uid,
                str(ds.SeriesInstanceUID),
                str(ds.SOPInstanceUID),
                sop_class or str(ds.SOPClassUID),
                "1.2.840.10008.1.2.1",
                path,
                "MODALITY",
            )
        )
    ctx.ledger.transition_study(study_uid, 1, StudyState.QUEUED)


def queued_analysis(
    ctx: WorkerContext,
    study_uid: str,
    paths: list[str],
    model_id: str,
    priority: Priority = "routine",
) -> Analyze:
    """The ``analyze`` message of a new analysis of a queued study (see :func:`record_queued`)."""
    manifest = ctx.registry.get(model_id)
    (row,) = ctx.ledger.create_analyses(
        study_uid, 1, [AnalysisSpec(manifest.id, manifest.version, len(paths))]
    )
    return Analyze(
        analysis_id=row.id,
        study_uid=study_uid,
        generation=1,
        model_id=model_id,
        model_version=manifest.version,
        paths=paths,
        priority=priority,
    )


def _study(ctx: WorkerContext, tmp_path: Path) -> tuple[str, list[str]]:
    study = mixed_study(tmp_path / "study", ct_slices=2)
    paths = [str(path) for path in study.files]
    record_queued(ctx, study.study_uid, paths)
    return study.study_uid, paths


def _messages(client: redis.Redis, queue: str) -> list[dict[str, Any]]:
    return queued_messages(client, queue)


def test_route_twice_creates_each_analysis_once(
    chain: tuple[Celery, WorkerContext, redis.Redis], tmp_path: Path
) -> None:
    app, ctx, client = chain
    study_uid, paths = _study(ctx, tmp_path)
    request = RouteStudy(study_uid=study_uid, generation=1, paths=paths, calling_ae="MODALITY")
    for _ in range(2):
        result = app.tasks[ROUTE_TASK].apply(kwargs={"request": request.model_dump()})
        assert result.successful(), result.traceback
    view = ctx.ledger.get(study_uid)
    assert view is not None and view.study.state is StudyState.ROUTED
    (analysis,) = view.analyses  # DICOM_NODE_MODELS names only the chest model
    assert analysis.analysis.model_id == CHEST and analysis.analysis.n_instances == 1
    published = _messages(client, model_queue(CHEST))
    assert len(published) == 2  # the same task id twice: analyze claims it once
    assert {m["headers"]["id"] for m in published} == {f"analyze:{analysis.analysis.id}"}


def test_analyze_killed_after_writing_its_report_runs_again_to_one_report(
    chain: tuple[Celery, WorkerContext, redis.Redis],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app, ctx, client = chain
    study_uid, paths = _study(ctx, tmp_path)
    manifest = ctx.registry.get(CHEST)
    (analysis,) = ctx.ledger.create_analyses(
        study_uid, 1, [AnalysisSpec(manifest.id, manifest.version, 1)]
    )
    request = Analyze(
        analysis_id=analysis.id,
        study_uid=study_uid,
        generation=1,
        model_id=CHEST,
        model_version=analysis.model_version,
        paths=[p for p in paths if p.endswith("chest.dcm")],
    )
    real = Ledger.transition_analysis

    def dies_before_reported(self: Ledger, analysis_id: int, to: AnalysisState, **kw: Any) -> bool:
        if to is AnalysisState.REPORTED:
            raise WorkerKilledError("worker killed after the report was written")
        return real(self, analysis_id, to, **kw)

    monkeypatch.setattr(Ledger, "transition_analysis", dies_before_reported)
    first = app.tasks[ANALYZE_TASK].apply(kwargs={"request": request.model_dump()})
    assert isinstance(first.result, WorkerKilledError)
    monkeypatch.undo()
    assert ctx.ledger.get_analysis(analysis.id).state is AnalysisState.RUNNING  # type: ignore[union-attr]

    second = app.tasks[ANALYZE_TASK].apply(kwargs={"request": request.model_dump()})
    assert second.successful(), second.traceback
    third = app.tasks[ANALYZE_TASK].apply(kwargs={"request": request.model_dump()})
    assert third.result["outcome"] == "skipped"  # reported: a late duplicate does nothing

    view = ctx.ledger.get(study_uid)
    assert view is not None
    (done,) = view.analyses
    assert done.analysis.state is AnalysisState.REPORTED
    (report,) = done.reports  # exactly one report row ...
    (delivery,) = report.deliveries  # ... and one delivery per destination (the outbox)
    reports = list((ctx.settings.data_dir / "reports").iterdir())
    assert [p.name for p in reports] == [f"{report.report.sop_instance_uid}.dcm"]
    assert dcmread(reports[0]).SOPInstanceUID == report.report.sop_instance_uid
    sent = _messages(client, DELIVERY_QUEUE)
    assert delivery.destination == "outbox"
    assert {m["headers"]["id"] for m in sent} == {f"deliver:{analysis.id}:outbox"}


def test_worker_queues() -> None:
    assert worker_queues(["a", "b"]) == [ROUTE_QUEUE, DELIVERY_QUEUE, "infer.a", "infer.b"]


def test_nothing_is_built_at_import_time(tmp_path: Path) -> None:
    """Importing every module reads no settings and creates no Celery app or model."""
    code = """
import importlib, pkgutil, sys
import celery._state
for root in ("dicom_node", "models", "workers"):
    pkg = importlib.import_module(root)
    for info in pkgutil.walk_packages(pkg.__path__, root + "."):
        if ".migrations." not in info.name:
            importlib.import_module(info.name)
apps = [a for a in celery._state._apps if a.main != "default"]
assert not apps, apps
print("imported", len(sys.modules))
"""
    env = {"DICOM_NODE_PORT": "not-a-port", "DICOM_NODE_CONFIG": str(tmp_path / "missing.yaml")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**_base_env(), **env},
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.returncode == 0, out.stderr
    assert "imported" in out.stdout


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE_")}
