"""A real Celery worker on the threads pool: STAT messages first, remote control while busy.

Real parts: Redis (tests/conftest.py), the node's Celery app and ``analyze`` task,
a Celery worker on the threads pool started in this process by
``celery.contrib.testing.worker.start_worker`` (its consumer and pool threads
are those of ``dicom-node worker``), the ledger, the shipped chest model on its
demo weights (ONNX Runtime on the CPU), and the SCP's stall-sweeper broker
(:class:`dicom_node.ingest.publisher.CeleryBroker`) asking the worker with
``query_task``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_node.core.contract import ANALYZE_TASK, Analyze, Priority, model_queue
from dicom_node.core.ledger import AnalysisState
from dicom_node.ingest.recovery import StallSweeper
from tests.conftest import wait_for, with_new_uids
from tests.test_tasks import CHEST, queued_analysis, record_queued, task_chain
from workers.context import WorkerContext

pytestmark = pytest.mark.filterwarnings(
    "ignore:Call to deprecated setex:DeprecationWarning"  # Celery's Redis result backend
)


@pytest.fixture()
def node(
    tmp_path: Path, redis_url: str, models_dir: Path
) -> Iterator[tuple[Celery, WorkerContext, redis.Redis]]:
    app, ctx, client = task_chain(tmp_path, redis_url, models_dir, CHEST, with_results=False)
    yield app, ctx, client
    ctx.close()
    ctx.ledger.dispose()
    client.flushdb()


def _analysis(ctx: WorkerContext, files: list[Path], priority: Priority) -> Analyze:
    """A queued analysis of a new one-series study made of ``files``."""
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    paths = [str(f) for f in files]
    record_queued(ctx, study_uid, paths)
    return queued_analysis(ctx, study_uid, paths, CHEST, priority)


def _study_files(source: Path, directory: Path, count: int) -> list[Path]:
    """``count`` instances of one new study, each a copy of ``source``."""
    directory.mkdir(parents=True)
    first = with_new_uids(source, directory / "0.dcm")
    files = [first]
    ds = dcmread(first)
    for k in range(1, count):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(directory / f"{k}.dcm", enforce_file_format=True)
        files.append(directory / f"{k}.dcm")
    return files


def _publish(app: Celery, payload: Analyze) -> None:
    app.send_task(
        ANALYZE_TASK,
        kwargs={"request": payload.model_dump(mode="json")},
        task_id=payload.task_id,
        queue=model_queue(payload.model_id),
        priority=payload.celery_priority,
    )


def _report_id(ctx: WorkerContext, payload: Analyze) -> int:
    view = ctx.ledger.get(payload.study_uid)
    assert view is not None
    (analysis,) = view.analyses
    assert analysis.analysis.state is AnalysisState.REPORTED, analysis.analysis.reason
    return min(r.report.id for r in analysis.reports)


def test_a_stat_analysis_published_after_routine_ones_is_taken_first(
    node: tuple[Celery, WorkerContext, redis.Redis], tmp_path: Path, ct_path: Path
) -> None:
    app, ctx, _ = node
    routine = [
        _analysis(ctx, _study_files(ct_path, tmp_path / f"r{i}", 1), "routine") for i in range(4)
    ]
    stat = _analysis(ctx, _study_files(ct_path, tmp_path / "stat", 1), "stat")
    for payload in [*routine, stat]:  # the STAT one last
        _publish(app, payload)

    # one thread, one message at a time (prefetch 1): the order they are taken in
    with start_worker(
        app,
        pool="threads",
        concurrency=1,
        perform_ping_check=False,
        queues=[model_queue(CHEST)],
        shutdown_timeout=60,
    ):
        wait_for(
            lambda: all(
                (a := ctx.ledger.get_analysis(p.analysis_id)) and a.state is AnalysisState.REPORTED
                for p in [*routine, stat]
            ),
            120,
            "every analysis reported",
            interval=0.1,
        )
    order = sorted([*routine, stat], key=lambda p: _report_id(ctx, p))
    assert order[0] == stat  # reports are numbered in the order the worker ran them
    assert order[1:] == routine  # then the routine ones, first published first


def test_a_busy_threads_pool_still_answers_the_stall_sweeper(
    node: tuple[Celery, WorkerContext, redis.Redis], tmp_path: Path, ct_path: Path
) -> None:
    """The stall sweeper (dicom_node.ingest.recovery) asks ``query_task``; while every
    pool thread runs an analysis the worker's consumer thread must still answer, so the
    sweeper leaves analyses past their deadline alone (a live worker holds them)."""
    app, ctx, _ = node
    busy = [
        _analysis(ctx, _study_files(ct_path, tmp_path / f"b{i}", 32), "routine") for i in range(2)
    ]
    for payload in busy:
        ctx.ledger.record_dispatch(payload.analysis_id, payload.model_dump_json())
        _publish(app, payload)
    settings = ctx.settings.model_copy(update={"analysis_stall_seconds": 10})
    sweeper = StallSweeper(ctx.ledger, settings)

    def states(state: AnalysisState) -> bool:
        return all((a := ctx.ledger.get_analysis(p.analysis_id)) and a.state is state for p in busy)

    with start_worker(
        app,
        pool="threads",
        concurrency=2,
        perform_ping_check=False,
        queues=[model_queue(CHEST)],
        shutdown_timeout=120,
    ):
        wait_for(lambda: states(AnalysisState.RUNNING), 60, "both analyses running", 0.01)
        sweeps = [sweeper.sweep(time.time() + 11) for _ in range(3)]
        still_running = states(AnalysisState.RUNNING)
        wait_for(lambda: states(AnalysisState.REPORTED), 120, "both analyses reported", 0.1)
    assert still_running, "the analyses ended before the sweeps did: make them longer"
    assert [(r.stalled, r.held, r.republished) for r in sweeps] == [(2, 2, 0)] * 3


class FakeRacingBroker:
    """FAKE broker: the message leaves its queue for a live worker during the first look.

    The first ``held_task_ids`` sees it in neither place (the worker answered before
    taking it; the queue was listed after); any later look sees the worker holding it.
    """

    def __init__(self) -> None:
        self.looks: list[set[str]] = []
        self.published: list[Analyze] = []

    def held_task_ids(self, task_queues: Mapping[str, str]) -> set[str]:
        self.looks.append(set(task_queues))
        return set() if len(self.looks) == 1 else set(task_queues)

    def publish_analyze(self, payload: Analyze) -> None:
        self.published.append(payload)


def test_the_sweeper_looks_twice_before_republishing(
    node: tuple[Celery, WorkerContext, redis.Redis], tmp_path: Path, ct_path: Path
) -> None:
    """A restarted worker that takes a re-published message during a sweep must not
    make the sweeper publish it yet again (found by test_kill's two-study kill)."""
    _, ctx, _ = node
    payload = _analysis(ctx, _study_files(ct_path, tmp_path / "s", 1), "stat")
    ctx.ledger.record_dispatch(payload.analysis_id, payload.model_dump_json())
    assert ctx.ledger.transition_analysis(payload.analysis_id, AnalysisState.RUNNING)
    settings = ctx.settings.model_copy(update={"analysis_stall_seconds": 10})
    broker = FakeRacingBroker()
    result = StallSweeper(ctx.ledger, settings, broker=broker).sweep(time.time() + 11)
    assert (result.stalled, result.held, result.republished) == (1, 1, 0)
    assert broker.looks == [{payload.task_id}] * 2 and not broker.published
