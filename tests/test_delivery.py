"""The ``deliver`` task against real PACS: retries, dead letters, warnings, timeouts, reuse.

Real parts: Redis (tests/conftest.py), the node's Celery app and ``deliver``
task, run in this process by ``Task.apply`` (one attempt, its retries at once)
or by a Celery worker on the threads pool started here by
``celery.contrib.testing.worker.start_worker`` (each retry a real countdown
message in Redis), the ledger, and pynetdicom storage SCPs on loopback ports as
the PACS (:class:`Pacs`). Reports are small Part 10 SR files recorded through
the ledger API, so these tests run no model; tests/test_supersede.py runs the
whole chain.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import Comprehensive3DSRStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt

from dicom_node.core import dimse
from dicom_node.core.contract import DELIVER_TASK, DELIVERY_QUEUE, Deliver
from dicom_node.core.ledger import (
    AnalysisSpec,
    AnalysisState,
    DeliverySnapshot,
    DeliveryState,
    InstanceRecord,
    StudyState,
)
from dicom_node.core.settings import Settings
from tests.conftest import free_port, queued_messages, start_redis, wait_for
from workers.app import create_app
from workers.context import WorkerContext, init_context
from workers.tasks.analyze import publish_deliveries
from workers.tasks.deliver import backoff_seconds

CHEST = "xrv-densenet121-res224-all"
PACS_AE = "TEST_PACS"
CR_CLASS = "1.2.840.10008.5.1.4.1.1.1"

FAST = {
    "delivery_retry_base_seconds": 0.2,
    "delivery_retry_max_seconds": 1.0,
    "acse_timeout": 2.0,
    "dimse_timeout": 2.0,
    "network_timeout": 2.0,
}
"""Back-off and timeouts small enough for tests (seconds)."""


@dataclass
class Pacs:
    """A real pynetdicom storage SCP on a loopback port, playing the PACS.

    ``statuses`` are answered to the C-STORE requests in order (then Success);
    while ``hold`` is set and not yet released, a C-STORE is never answered. The
    port is chosen at creation, so the PACS can be named in a destination and
    started later ("down, then back").
    """

    name: str = "pacs"
    statuses: Sequence[int] = ()
    hold: threading.Event | None = None
    port: int = field(default_factory=free_port)
    answers: list[tuple[str, int]] = field(default_factory=list)
    received: list[Dataset] = field(default_factory=list)
    associations: int = 0
    _server: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Pacs:
        ae = AE(ae_title=PACS_AE)
        ae.require_called_aet = True
        ae.add_supported_context(Comprehensive3DSRStorage)
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_ESTABLISHED, self._on_assoc),
        ]
        self._server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)
        return self

    def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def destination(self, **extra: Any) -> dict[str, Any]:
        """This PACS as a ``DICOM_NODE_DESTINATIONS`` entry."""
        return {
            "name": self.name,
            "kind": "c_store",
            "ae_title": PACS_AE,
            "host": "127.0.0.1",
            "port": self.port,
            **extra,
        }

    def stored(self) -> list[str]:
        """SOP Instance UIDs the PACS kept (answered Success or a Warning), in order."""
        with self._lock:
            return [uid for uid, status in self.answers if dimse.is_success_or_warning(status)]

    def _on_assoc(self, event: Any) -> None:
        with self._lock:
            self.associations += 1

    def _on_store(self, event: Any) -> int:
        if self.hold is not None:
            self.hold.wait(30)
        ds = event.dataset
        with self._lock:
            n = len(self.answers)
            status = self.statuses[n] if n < len(self.statuses) else dimse.SUCCESS
            self.answers.append((str(ds.SOPInstanceUID), status))
            if dimse.is_success_or_warning(status):
                self.received.append(ds)
        return status


@pytest.fixture
def pacs_factory() -> Iterator[Callable[..., Pacs]]:
    """Make PACS (not started); every one is stopped at the end."""
    made: list[Pacs] = []

    def make(**kwargs: Any) -> Pacs:
        made.append(Pacs(**kwargs))
        return made[-1]

    yield make
    for pacs in made:
        pacs.stop()


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of this module's own in this pytest process: under ``pytest -n``,
    a worker started by one test never takes another process's ``deliver`` tasks."""
    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


def node(
    tmp_path: Path, broker_url: str, models_dir: Path, **settings: Any
) -> tuple[Celery, WorkerContext, redis.Redis]:
    """The real Celery app and worker context on ``broker_url`` (flushed first).

    ``settings`` override :class:`Settings` fields (``destinations`` ...); the
    rest comes from the environment (``DICOM_NODE_DESTINATIONS`` included).
    """
    client = redis.Redis.from_url(broker_url)
    client.flushdb()
    fields: dict[str, Any] = {
        "data_dir": tmp_path / "node",
        "models_dir": models_dir,
        "broker_url": broker_url,
        "allow_demo_weights": True,
        "models": CHEST,
        "ae_title": "NODE_TEST",
        **FAST,
        **settings,
    }
    ctx = init_context(Settings(**fields))
    return create_app(ctx.settings, with_results=False), ctx, client


@pytest.fixture
def chain(
    tmp_path: Path, own_redis: str, models_dir: Path
) -> Iterator[Callable[..., tuple[Celery, WorkerContext]]]:
    """``chain(**settings)``: see :func:`node`; closed and flushed at the end."""
    made: list[tuple[WorkerContext, redis.Redis]] = []

    def make(**settings: Any) -> tuple[Celery, WorkerContext]:
        app, ctx, client = node(tmp_path, own_redis, models_dir, **settings)
        made.append((ctx, client))
        return app, ctx

    yield make
    for ctx, client in made:
        ctx.close()
        ctx.ledger.dispose()
        client.flushdb()


def delivery_worker(app: Celery) -> AbstractContextManager[Any]:
    """A real Celery worker (threads pool, 2 threads) on the delivery queue, in this process."""
    return start_worker(
        app,
        pool="threads",
        concurrency=2,
        perform_ping_check=False,
        queues=[DELIVERY_QUEUE],
        shutdown_timeout=30,
    )


@dataclass(frozen=True)
class Case:
    """A reported analysis of a one-image study, with its report objects (SOP Instance UIDs)."""

    study_uid: str
    analysis_id: int
    sops: list[str]


def report_file(folder: Path, study_uid: str, series_uid: str) -> tuple[Path, str]:
    """A small Comprehensive 3D SR Part 10 file (Explicit VR Little Endian); its path and UID."""
    ds = Dataset()
    ds.SOPClassUID = Comprehensive3DSRStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "SR"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.SOPInstanceUID)


def reported(
    ctx: WorkerContext, folder: Path, destinations: Sequence[str], objects: int = 1
) -> Case:
    """Record a routed one-image study whose analysis is reported with ``objects`` SR objects
    (profile tid1500, ordinals 0, 1, ...), each pending for every destination."""
    ledger = ctx.ledger
    study_uid, series_uid = generate_uid(), generate_uid()
    image = InstanceRecord(
        study_uid,
        generate_uid(),
        generate_uid(),
        CR_CLASS,
        ExplicitVRLittleEndian,
        str(folder / "image.dcm"),
        "MODALITY",
    )
    assert ledger.record_instance(image)
    assert ledger.transition_study(study_uid, 1, StudyState.QUEUED)
    (analysis,) = ledger.create_analyses(study_uid, 1, [AnalysisSpec(CHEST, "1.0", 1)])
    assert ledger.transition_study(study_uid, 1, StudyState.ROUTED)
    assert ledger.transition_analysis(analysis.id, AnalysisState.RUNNING)
    assert ledger.transition_analysis(analysis.id, AnalysisState.REPORTED)
    sops = []
    for ordinal in range(objects):
        path, sop = report_file(folder / "reports", study_uid, series_uid)
        row = ledger.add_report(
            analysis.id,
            "tid1500",
            sop,
            series_uid,
            str(path),
            sop_class_uid=Comprehensive3DSRStorage,
            ordinal=ordinal,
        )
        ledger.add_deliveries(row.id, list(destinations))
        sops.append(sop)
    return Case(study_uid, analysis.id, sops)


def deliveries(
    ctx: WorkerContext, case: Case, destination: str | None = None
) -> list[DeliverySnapshot]:
    """The case's deliveries (to ``destination``), in report order."""
    view = ctx.ledger.get(case.study_uid)
    assert view is not None
    found = [
        d
        for a in view.analyses
        if a.analysis.id == case.analysis_id
        for r in sorted(a.reports, key=lambda r: r.report.ordinal)
        for d in r.deliveries
        if destination is None or d.destination == destination
    ]
    assert found
    return found


def in_state(
    ctx: WorkerContext, case: Case, state: DeliveryState, destination: str | None = None
) -> list[DeliverySnapshot] | None:
    """The case's deliveries if every one is in ``state`` (a ``wait_for`` predicate)."""
    found = deliveries(ctx, case, destination)
    return found if all(d.state is state for d in found) else None


def deliver_now(app: Celery, case: Case, destination: str = "pacs") -> dict[str, Any]:
    """Run ``deliver`` here (``Task.apply``: a retry runs again at once); its outcome."""
    request = Deliver(analysis_id=case.analysis_id, destination=destination)
    result = app.tasks[DELIVER_TASK].apply(kwargs={"request": request.model_dump()})
    assert result.successful(), result.traceback
    outcome: dict[str, Any] = result.result
    return outcome


def publish(app: Celery, case: Case, destinations: Sequence[str]) -> None:
    """Publish ``deliver`` as ``analyze`` does (one task per destination)."""
    publish_deliveries(app.tasks[DELIVER_TASK], case.analysis_id, destinations)


def test_pacs_down_then_back_is_delivered_once(
    chain: Callable[..., tuple[Celery, WorkerContext]],
    pacs_factory: Callable[..., Pacs],
    tmp_path: Path,
) -> None:
    pacs = pacs_factory()  # its port is named, nothing listens yet
    app, ctx = chain(destinations=[pacs.destination()])
    case = reported(ctx, tmp_path, ["pacs"])
    with delivery_worker(app):
        publish(app, case, ["pacs"])
        (waiting,) = wait_for(
            lambda: in_state(ctx, case, DeliveryState.RETRYING), 20, "a failed first attempt"
        )
        assert waiting.attempts >= 1 and waiting.status is None
        assert waiting.last_error and f"{PACS_AE}@127.0.0.1:{pacs.port}" in waiting.last_error
        pacs.start()
        (done,) = wait_for(
            lambda: in_state(ctx, case, DeliveryState.DELIVERED),
            20,
            "delivery after the PACS came back",
        )
    assert pacs.stored() == case.sops  # exactly one copy
    assert done.status == dimse.SUCCESS and done.warning is None and done.delivered_at
    assert done.attempts > waiting.attempts  # the failed attempts are counted


def test_refused_is_retried_then_delivered(
    chain: Callable[..., tuple[Celery, WorkerContext]],
    pacs_factory: Callable[..., Pacs],
    tmp_path: Path,
) -> None:
    pacs = pacs_factory(statuses=[0xA700]).start()
    app, ctx = chain(destinations=[pacs.destination()])
    case = reported(ctx, tmp_path, ["pacs"])
    with delivery_worker(app):
        publish(app, case, ["pacs"])
        (done,) = wait_for(
            lambda: in_state(ctx, case, DeliveryState.DELIVERED), 20, "delivery after 0xA700"
        )
    assert pacs.answers == [(case.sops[0], 0xA700), (case.sops[0], dimse.SUCCESS)]
    assert pacs.stored() == case.sops
    assert done.attempts == 2 and done.status == dimse.SUCCESS
    assert done.last_error and "0xA700" in done.last_error  # the refusal stays on record


def test_error_status_is_a_dead_letter_at_once(
    chain: Callable[..., tuple[Celery, WorkerContext]],
    pacs_factory: Callable[..., Pacs],
    tmp_path: Path,
) -> None:
    pacs = pacs_factory(statuses=[0xC000]).start()
    app, ctx = chain(destinations=[pacs.destination()])
    case = reported(ctx, tmp_path, ["pacs"])
    outcome = deliver_now(app, case)  # a retry would run at once here, and be counted
    assert outcome["outcome"] == "failed" and outcome["state"] == DeliveryState.FAILED
    (dead,) = deliveries(ctx, case)
    assert dead.state is DeliveryState.FAILED and dead.status == 0xC000
    assert dead.attempts == 1 and dead.last_error and "0xC000" in dead.last_error
    assert pacs.answers == [(case.sops[0], 0xC000)]  # not retried
    (letter,) = [d for d in ctx.ledger.dead_letters() if d.delivery_id == dead.id]
    assert letter.status == 0xC000 and letter.sop_instance_uid == case.sops[0]
    assert deliver_now(app, case)["outcome"] == "skipped"  # a redelivered task sends nothing
    assert len(pacs.answers) == 1


def test_warning_statuses_count_as_delivered_with_the_warning(
    chain: Callable[..., tuple[Celery, WorkerContext]],
    pacs_factory: Callable[..., Pacs],
    tmp_path: Path,
) -> None:
    pacs = pacs_factory(statuses=[0xB000, 0xB007]).start()
    app, ctx = chain(destinations=[pacs.destination()])
    case = reported(ctx, tmp_path, ["pacs"], objects=2)
    outcome = deliver_now(app, case)
    assert outcome["outcome"] == "done" and outcome["state"] == DeliveryState.DELIVERED
    coerced, mismatch = deliveries(ctx, case)
    assert (coerced.state, coerced.status) == (DeliveryState.DELIVERED, 0xB000)
    assert (mismatch.state, mismatch.status) == (DeliveryState.DELIVERED, 0xB007)
    assert coerced.warning and "0xB000" in coerced.warning
    assert mismatch.warning and "0xB007" in mismatch.warning
    assert coerced.attempts == mismatch.attempts == 1
    assert pacs.stored() == case.sops and not ctx.ledger.dead_letters()


def test_pacs_that_never_answers_times_out_and_the_task_does_not_hang(
    chain: Callable[..., tuple[Celery, WorkerContext]],
    pacs_factory: Callable[..., Pacs],
    tmp_path: Path,
) -> None:
    hold = threading.Event()
    pacs = pacs_factory(hold=hold).start()  # accepts the association, never answers C-STORE
    app, ctx = chain(destinations=[pacs.destination()])  # DIMSE timeout 2 s
    case = reported(ctx, tmp_path, ["pacs"])
    with delivery_worker(app):
        started = time.monotonic()
        publish(app, case, ["pacs"])
        (waiting,) = wait_for(
            lambda: in_state(ctx, case, DeliveryState.RETRYING), 30, "the attempt to time out"
        )
        elapsed = time.monotonic() - started
        assert waiting.last_error and "no C-STORE response" in waiting.last_error
        assert elapsed < 15, f"one attempt took {elapsed:.1f} s with a 2 s DIMSE timeout"
        hold.set()  # the PACS answers again: the next attempt goes through
        wait_for(lambda: in_state(ctx, case, DeliveryState.DELIVERED), 30, "delivery")
    assert set(pacs.stored()) == set(case.sops)  # the same UID each time: one object


def test_one_destination_down_blocks_neither_the_other_nor_other_studies(
    chain: Callable[..., tuple[Celery, WorkerContext]],
    pacs_factory: Callable[..., Pacs],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    up = pacs_factory(name="pacs-a").start()
    down = pacs_factory(name="pacs-b")  # down until the end
    config = [up.destination(), down.destination()]
    monkeypatch.setenv("DICOM_NODE_DESTINATIONS", json.dumps(config))
    app, ctx = chain()
    assert [d.name for d in ctx.settings.report_destinations] == ["pacs-a", "pacs-b"]
    first = reported(ctx, tmp_path / "1", ["pacs-a", "pacs-b"])
    second = reported(ctx, tmp_path / "2", ["pacs-a", "pacs-b"])
    with delivery_worker(app):
        publish(app, first, ["pacs-a", "pacs-b"])
        publish(app, second, ["pacs-a", "pacs-b"])
        for case in (first, second):
            wait_for(
                lambda c=case: in_state(ctx, c, DeliveryState.DELIVERED, "pacs-a"),
                20,
                "the reachable destination's deliveries",
            )
            # each study's delivery to the down destination is tried on its own
            wait_for(
                lambda c=case: (
                    (d := in_state(ctx, c, DeliveryState.RETRYING, "pacs-b")) and d[0].attempts >= 2
                ),
                20,
                "retries to the down destination",
            )
        assert sorted(up.stored()) == sorted(first.sops + second.sops)
        down.start()
        for case in (first, second):
            wait_for(
                lambda c=case: in_state(ctx, c, DeliveryState.DELIVERED, "pacs-b"),
                20,
                "the other destination once it is back",
            )
    assert sorted(down.stored()) == sorted(first.sops + second.sops)
    assert sorted(up.stored()) == sorted(first.sops + second.sops)


def test_last_attempt_makes_a_dead_letter_with_the_last_reason(
    chain: Callable[..., tuple[Celery, WorkerContext]],
    pacs_factory: Callable[..., Pacs],
    tmp_path: Path,
) -> None:
    refusing = pacs_factory(name="refusing", statuses=[0xA700] * 10).start()
    down = pacs_factory(name="down")
    app, ctx = chain(
        destinations=[refusing.destination(), down.destination()], delivery_max_attempts=3
    )
    case = reported(ctx, tmp_path, ["refusing", "down"])
    with delivery_worker(app):
        started = time.monotonic()
        publish(app, case, ["refusing", "down"])
        wait_for(lambda: in_state(ctx, case, DeliveryState.FAILED), 30, "two dead letters")
        elapsed = time.monotonic() - started
    waits = [backoff_seconds(n, 0.2, 1.0) for n in range(5)]
    assert waits == pytest.approx([0.2, 0.4, 0.8, 1.0, 1.0])  # doubling up to the cap
    assert elapsed >= sum(waits[:2])  # each retry waited its countdown
    (refused,) = deliveries(ctx, case, "refusing")
    (unreachable,) = deliveries(ctx, case, "down")
    assert refused.attempts == 3 and refused.status == 0xA700
    assert refused.last_error and "0xA700" in refused.last_error
    assert "after 3 attempts" in refused.last_error
    assert unreachable.attempts == 3 and unreachable.status is None
    assert unreachable.last_error and f"127.0.0.1:{down.port}" in unreachable.last_error
    assert "after 3 attempts" in unreachable.last_error
    assert [a[1] for a in refusing.answers] == [0xA700] * 3
    letters = {d.destination: d for d in ctx.ledger.dead_letters()}
    assert letters["refusing"].delivery_id == refused.id
    assert letters["down"].delivery_id == unreachable.id


def test_objects_ready_together_share_one_association(
    chain: Callable[..., tuple[Celery, WorkerContext]],
    pacs_factory: Callable[..., Pacs],
    tmp_path: Path,
) -> None:
    pacs = pacs_factory().start()
    app, ctx = chain(destinations=[pacs.destination()])
    case = reported(ctx, tmp_path, ["pacs"], objects=3)
    assert deliver_now(app, case)["outcome"] == "done"
    assert pacs.stored() == case.sops  # in sending order (ordinal)
    assert pacs.associations == 1
    assert all(d.state is DeliveryState.DELIVERED for d in deliveries(ctx, case))


def test_a_superseded_generation_is_never_sent(
    chain: Callable[..., tuple[Celery, WorkerContext]],
    pacs_factory: Callable[..., Pacs],
    tmp_path: Path,
) -> None:
    pacs = pacs_factory().start()
    app, ctx = chain(destinations=[pacs.destination()])
    case = reported(ctx, tmp_path, ["pacs"])
    late = InstanceRecord(
        case.study_uid,
        generate_uid(),
        generate_uid(),
        CR_CLASS,
        ExplicitVRLittleEndian,
        str(tmp_path / "late.dcm"),
        "MODALITY",
    )
    assert ctx.ledger.record_instance(late)  # the study reopens as generation 2
    outcome = deliver_now(app, case)
    assert outcome["state"] == DeliveryState.SUPERSEDED and outcome["outcome"] == "skipped"
    (dropped,) = deliveries(ctx, case)
    assert dropped.state is DeliveryState.SUPERSEDED and dropped.attempts == 0
    assert pacs.associations == 0 and not pacs.answers
    assert deliver_now(app, case)["outcome"] == "skipped"  # and stays unsent
    assert pacs.associations == 0


def test_redelivered_analyze_of_a_reported_analysis_publishes_its_open_deliveries(
    chain: Callable[..., tuple[Celery, WorkerContext]],
    pacs_factory: Callable[..., Pacs],
    tmp_path: Path,
) -> None:
    """A worker that died between recording the reports and publishing ``deliver``:
    ``analyze`` delivered again publishes them (``_resume_deliveries``), and only the
    destinations still open."""
    from dicom_node.core.contract import ANALYZE_TASK, Analyze

    a, b = pacs_factory(name="a").start(), pacs_factory(name="b").start()
    app, ctx = chain(destinations=[a.destination(), b.destination()])
    case = reported(ctx, tmp_path, ["a", "b"])
    assert deliver_now(app, case, "a")["outcome"] == "done"
    request = Analyze(
        analysis_id=case.analysis_id,
        study_uid=case.study_uid,
        generation=1,
        model_id=CHEST,
        model_version="1.0",
        paths=[str(tmp_path / "image.dcm")],
    )
    result = app.tasks[ANALYZE_TASK].apply(kwargs={"request": request.model_dump()})
    assert result.successful(), result.traceback
    assert result.result["outcome"] == "skipped"
    client = redis.Redis.from_url(ctx.settings.broker_url or "")
    sent = queued_messages(client, DELIVERY_QUEUE)
    assert [m["headers"]["id"] for m in sent] == [f"deliver:{case.analysis_id}:b"]


def test_mixed_statuses_in_one_attempt_are_judged_one_by_one(
    chain: Callable[..., tuple[Celery, WorkerContext]],
    pacs_factory: Callable[..., Pacs],
    tmp_path: Path,
) -> None:
    pacs = pacs_factory(statuses=[dimse.SUCCESS, 0xA700, 0xA900]).start()
    app, ctx = chain(destinations=[pacs.destination()])
    case = reported(ctx, tmp_path, ["pacs"], objects=3)
    with delivery_worker(app):
        publish(app, case, ["pacs"])
        wait_for(
            lambda: deliveries(ctx, case)[1].state is DeliveryState.DELIVERED,
            20,
            "the refused object on its retry",
        )
    ok, refused, error = deliveries(ctx, case)
    assert (ok.state, ok.attempts) == (DeliveryState.DELIVERED, 1)
    assert (refused.state, refused.attempts) == (DeliveryState.DELIVERED, 2)
    assert (error.state, error.status, error.attempts) == (DeliveryState.FAILED, 0xA900, 1)
    assert [uid for uid, _ in pacs.answers] == [*case.sops, case.sops[1]]  # only it again
    assert pacs.associations == 2


def test_unreadable_report_or_unknown_destination_is_a_dead_letter(
    chain: Callable[..., tuple[Celery, WorkerContext]],
    pacs_factory: Callable[..., Pacs],
    tmp_path: Path,
) -> None:
    pacs = pacs_factory().start()
    app, ctx = chain(destinations=[pacs.destination()])
    corrupt = reported(ctx, tmp_path / "corrupt", ["pacs"])
    (path,) = (tmp_path / "corrupt" / "reports").iterdir()
    path.write_bytes(b"not DICOM at all" * 10)
    outcome = deliver_now(app, corrupt)
    assert outcome["outcome"] == "failed"
    (dead,) = deliveries(ctx, corrupt)
    assert dead.state is DeliveryState.FAILED and dead.last_error
    assert "report file unreadable" in dead.last_error

    gone = reported(ctx, tmp_path / "gone", ["pacs"])
    path = next((tmp_path / "gone" / "reports").iterdir())
    path.unlink()
    assert deliver_now(app, gone)["outcome"] == "failed"
    (dead,) = deliveries(ctx, gone)
    assert dead.state is DeliveryState.FAILED
    assert dead.last_error and "report file unreadable" in dead.last_error

    removed = reported(ctx, tmp_path / "removed", ["old-pacs"])  # no longer configured
    assert deliver_now(app, removed, "old-pacs")["outcome"] == "failed"
    (dead,) = deliveries(ctx, removed)
    assert dead.state is DeliveryState.FAILED
    assert dead.last_error and "old-pacs" in dead.last_error
    assert not pacs.answers and pacs.associations == 0


def test_a_retrying_delivery_superseded_meanwhile_is_never_sent(
    chain: Callable[..., tuple[Celery, WorkerContext]],
    pacs_factory: Callable[..., Pacs],
    tmp_path: Path,
) -> None:
    pacs = pacs_factory()  # down
    app, ctx = chain(destinations=[pacs.destination()])
    case = reported(ctx, tmp_path, ["pacs"])
    with delivery_worker(app):
        publish(app, case, ["pacs"])
        wait_for(lambda: in_state(ctx, case, DeliveryState.RETRYING), 20, "a failed attempt")
        late = InstanceRecord(
            case.study_uid,
            generate_uid(),
            generate_uid(),
            CR_CLASS,
            ExplicitVRLittleEndian,
            str(tmp_path / "late.dcm"),
            "MODALITY",
        )
        assert ctx.ledger.record_instance(late)  # generation 2 while the delivery waits
        pacs.start()
        (dropped,) = wait_for(
            lambda: in_state(ctx, case, DeliveryState.SUPERSEDED), 20, "the next attempt"
        )
    assert pacs.associations == 0 and not pacs.answers
    assert dropped.attempts >= 1
