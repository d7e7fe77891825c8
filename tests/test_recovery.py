"""Recovery after crashes: spool ↔ ledger reconciliation, and the stall sweeper.

Reconciliation runs on a real spool and ledger, then a real SCP (with the
FAKE ``RecordingPublisher`` of test_scp) finishes the study. The sweeper runs
against a real Redis and real Celery worker processes: the workers use the
node's own Celery app (``workers.app.create_app``: acks_late,
reject_on_worker_lost, prefetch 1, the visibility timeout) with a FAKE
``analyze`` body that records each run and blocks until the test releases it,
so the test decides when a worker is busy and when it dies (kill -9).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_node.core.contract import MANUFACTURER, ROUTE_TASK, Analyze, RouteStudy, model_queue
from dicom_node.core.ledger import (
    AnalysisSpec,
    AnalysisState,
    InstanceRecord,
    InstanceRole,
    Ledger,
    StudyState,
)
from dicom_node.core.settings import Settings
from dicom_node.ingest import publisher
from dicom_node.ingest.reconcile import QUARANTINE, reconcile_spool
from dicom_node.ingest.recovery import StallSweeper
from dicom_node.ingest.scp import StoreSCP
from dicom_node.ingest.spool import INCOMING, Spool
from tests.conftest import free_port, queue_keys, queued_messages, start_redis, wait_for
from tests.test_scp import RecordingPublisher, _scu_store

CR_CLASS = "1.2.840.10008.5.1.4.1.1.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
CHEST = "xrv-densenet121-res224-all"
STALL = 30.0


def _instance(source: Path, study_uid: str, **attrs: object) -> Dataset:
    """The source instance under ``study_uid`` and a new SOP Instance UID."""
    ds = dcmread(source)
    ds.StudyInstanceUID = study_uid
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def _sr(study_uid: str) -> Dataset:
    """A minimal non-image object (Basic Text SR class) of ``study_uid``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.Modality = "SR"
    return ds


def _put(spool: Spool, ds: Dataset, mtime: float | None = None) -> Path:
    """Leave ``ds`` in the spool as a crash after the rename and before the ledger commit would."""
    path = spool.path_for(str(ds.StudyInstanceUID), str(ds.SOPInstanceUID))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def _settings(tmp_path: Path, **extra: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path / "node",
        "host": "127.0.0.1",
        "port": free_port(),
        "study_quiet_seconds": 0.3,
    }
    (tmp_path / "node").mkdir(exist_ok=True)
    return Settings(**(values | extra))  # type: ignore[arg-type]


# --- reconciliation -----------------------------------------------------------------------


def test_reconcile_removes_incoming_of_dead_processes_and_keeps_live_ones(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool")
    gone = subprocess.Popen(["true"])
    gone.wait()
    live = subprocess.Popen(["sleep", "60"])
    reused = subprocess.Popen(["sleep", "60"])  # a pid a new process got after the SCP died
    try:
        half = {}
        for pid in (gone.pid, live.pid, reused.pid, os.getpid()):
            half[pid] = spool.incoming_dir(pid) / "tmp1234abcd.dcm"
            half[pid].write_bytes(b"\0" * 1000)  # half a data set
        old = time.time() - 3600
        os.utime(half[reused.pid], (old, old))
        legacy = spool.root / "1.2.3" / ".tmp-0123456789abcdef"
        legacy.parent.mkdir()
        legacy.write_bytes(b"half")
        ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")

        result = reconcile_spool(spool, ledger)

        # Our own pid at start, a dead pid and a reused pid hold only leftovers.
        assert (result.incoming_removed, result.incoming_kept, result.tmp_removed) == (3, 1, 1)
        assert sorted(p.name for p in (spool.root / INCOMING).iterdir()) == [str(live.pid)]
        assert half[live.pid].exists() and not legacy.exists()
        assert (result.checked, result.recorded, result.quarantined) == (0, 0, 0)
        ledger.dispose()
    finally:
        for proc in (live, reused):
            proc.kill()
            proc.wait()


def test_reconcile_records_what_the_ledger_missed_and_the_study_is_published_once(
    tmp_path: Path, cr_path: Path
) -> None:
    settings = _settings(tmp_path, study_quiet_seconds=5.0)
    study_uid = generate_uid()
    first = StoreSCP(settings, publish=RecordingPublisher())
    first.start()
    try:  # one image arrives normally, from MODALITY's AE title (TEST_SCU)
        assert _scu_store(first.port, _instance(cr_path, study_uid)) == 0
    finally:
        first.stop()
    # The node then died after renaming three more objects into the spool and
    # before their ledger commits (or its last commits were lost with the power).
    spool = Spool(settings.data_dir / "spool")
    arrived = time.time() - 60
    image = _put(spool, _instance(cr_path, study_uid), arrived)
    report = _put(spool, _sr(study_uid), arrived)
    ours = _put(spool, _instance(cr_path, study_uid, Manufacturer=MANUFACTURER), arrived)

    sender = RecordingPublisher()
    scp = StoreSCP(settings.model_copy(update={"study_quiet_seconds": 0.3}), publish=sender)
    try:
        result = reconcile_spool(scp.spool, scp.ledger)
        assert (result.checked, result.recorded, result.quarantined) == (4, 3, 0)
        assert result.receiving == 1
        scp.start()  # reconciles again (nothing new), then the monitor queues the study
        wait_for(lambda: sender.sent, 10, "the study's task")
        view = scp.ledger.get(study_uid)
        assert view is not None and view.study.state is StudyState.QUEUED
        assert view.study.instance_count == 2 and view.study.calling_ae == "TEST_SCU"
        (payload,) = sender.sent
        assert len(payload.paths) == 2 and str(image) in payload.paths  # images only
        assert payload.generation == 1 and payload.calling_ae == "TEST_SCU"
        roles = _roles(scp.ledger, study_uid)
        assert roles[report.stem] == InstanceRole.NON_IMAGE.value
        assert roles[ours.stem] == InstanceRole.OWN_OUTPUT.value
        assert roles[image.stem] == InstanceRole.IMAGE.value
    finally:
        scp.stop()

    again = StoreSCP(settings, publish=sender)  # another restart: nothing to do
    again.start()
    try:
        assert reconcile_spool(again.spool, again.ledger).recorded == 0
        assert again.monitor is not None and again.monitor.tick() == 0
        assert len(sender.sent) == 1
    finally:
        again.stop()


def _column(ledger: Ledger, sql: str, **params: object) -> list[Any]:
    """Rows of a one- or two-column query, read straight from the ledger's database."""
    import sqlalchemy as sa

    engine = sa.create_engine(ledger.url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(sql), params).all()
    engine.dispose()
    return [r[0] if len(r) == 1 else tuple(r) for r in rows]


def _roles(ledger: Ledger, study_uid: str) -> dict[str, str]:
    sql = "SELECT sop_instance_uid, role FROM instances WHERE study_uid = :s"
    return dict(_column(ledger, sql, s=study_uid))


def test_reconcile_quarantines_unreadable_and_misfiled_files(
    tmp_path: Path, cr_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path / "spool")
    study_uid = generate_uid()
    whole = _put(spool, _instance(cr_path, study_uid, PatientName="RECON^SECRET"))
    truncated_uid = generate_uid()
    truncated = spool.path_for(study_uid, truncated_uid)
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    misfiled = spool.path_for(study_uid, generate_uid())
    misfiled.write_bytes(whole.read_bytes())  # a whole file under another SOP Instance UID
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")

    with caplog.at_level(logging.INFO, logger="dicom_node.ingest.reconcile"):
        result = reconcile_spool(spool, ledger)

    assert (result.checked, result.recorded, result.quarantined) == (3, 1, 2)
    assert sorted(p.name for p in spool.root.joinpath(study_uid).iterdir()) == [whole.name]
    quarantine = spool.root / QUARANTINE / study_uid
    assert sorted(p.name for p in quarantine.iterdir()) == sorted([truncated.name, misfiled.name])
    assert ledger.instance_exists(whole.stem)
    assert not ledger.instance_exists(truncated_uid) and not ledger.instance_exists(misfiled.stem)
    text = caplog.text
    assert truncated_uid in text and misfiled.stem in text  # logged by UID ...
    assert "SECRET" not in text  # ... never by a value
    ledger.dispose()


# --- the stall sweeper ----------------------------------------------------------------------

FAKE_WORKER = """
import os, sys, time
from pathlib import Path
from dicom_node.core.contract import ANALYZE_TASK
from dicom_node.core.settings import Settings
import workers.tasks
from workers.app import create_app

broker, queue, runs, release = sys.argv[1:5]
workers.tasks.register_tasks = lambda app: None  # the node's app and settings, no model code
app = create_app(Settings(broker_url=broker), with_results=False)


@app.task(name=ANALYZE_TASK, bind=True, acks_late=True)
def analyze(self, request):  # FAKE analyze: record the run, wait to be released
    with open(runs, "a") as out:
        out.write(f"{self.request.id} {os.getpid()}\\n")
    deadline = time.monotonic() + 60
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return "done"


app.worker_main(["worker", "-Q", queue, "--concurrency", "1", "--without-gossip",
                 "--without-mingle", "--loglevel", "WARNING",
                 "--hostname", f"fake-{os.getpid()}@%h"])
"""


@dataclass
class Bench:
    """A ledger with one ``running`` analysis, its broker, and FAKE workers to start."""

    settings: Settings
    ledger: Ledger
    client: redis.Redis
    payload: Analyze
    tmp_path: Path
    workers: list[subprocess.Popen[bytes]]

    @property
    def runs(self) -> list[str]:
        path = self.tmp_path / "runs"
        return path.read_text().splitlines() if path.exists() else []

    def queued(self) -> list[str]:
        queue = model_queue(self.payload.model_id)
        return [m["headers"]["id"] for m in queued_messages(self.client, queue)]

    def start_worker(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                FAKE_WORKER,
                str(self.settings.broker_url),
                model_queue(self.payload.model_id),
                str(self.tmp_path / "runs"),
                str(self.tmp_path / "release"),
            ],
            cwd=Path(__file__).resolve().parents[1],
            env={k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE_")},
        )
        self.workers.append(proc)
        return proc

    def analysis(self) -> tuple[AnalysisState, int, str | None]:
        a = self.ledger.get_analysis(self.payload.analysis_id)
        assert a is not None
        return a.state, a.requeues, a.reason


@pytest.fixture()
def bench(tmp_path: Path, redis_url: str) -> Iterator[Bench]:
    db = int(tmp_path.stat().st_ino % 15) + 1
    url = redis_url.rsplit("/", 1)[0] + f"/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    settings = _settings(
        tmp_path, broker_url=url, analysis_stall_seconds=STALL, analysis_max_requeues=2
    )
    ledger = Ledger(settings.resolved_ledger_url)
    bench = Bench(settings, ledger, client, _running_analysis(ledger, "fake-model"), tmp_path, [])
    yield bench
    for proc in bench.workers:
        proc.kill()
        proc.wait()
    ledger.dispose()
    client.flushdb()


def _running_analysis(ledger: Ledger, model_id: str, *, dispatched: bool = True) -> Analyze:
    """A study routed to ``model_id`` whose analysis a worker claimed (as route + analyze do)."""
    study_uid = generate_uid()
    sop_uid = generate_uid()
    path = f"/spool/{study_uid}/{sop_uid}.dcm"
    ledger.record_instance(
        InstanceRecord(study_uid, None, sop_uid, CR_CLASS, ExplicitVRLittleEndian, path, "MOD")
    )
    ledger.transition_study(study_uid, 1, StudyState.QUEUED)
    (analysis,) = ledger.create_analyses(study_uid, 1, [AnalysisSpec(model_id, "1.0", 1)])
    ledger.transition_study(study_uid, 1, StudyState.ROUTED)
    payload = Analyze(
        analysis_id=analysis.id,
        study_uid=study_uid,
        generation=1,
        model_id=model_id,
        model_version="1.0",
        paths=[path],
    )
    if dispatched:
        ledger.record_dispatch(analysis.id, payload.model_dump_json())
    assert ledger.transition_analysis(analysis.id, AnalysisState.RUNNING)
    return payload


def _later() -> float:
    """A sweep time past the stall deadline of anything started until now."""
    return time.time() + STALL + 1


def test_publisher_and_workers_share_the_visibility_timeout_and_priority_steps(
    tmp_path: Path,
) -> None:
    from workers.app import create_app

    settings = Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:1/0")
    ours = publisher.publisher_app(settings).conf
    workers = create_app(settings, with_results=False).conf
    for key in ("visibility_timeout", "priority_steps"):
        assert ours.broker_transport_options[key] == workers.broker_transport_options[key]
    # kombu files a message without a priority under 0, the step served first: both apps
    # give unprioritised messages the routine priority, so only STAT work goes ahead.
    assert ours.task_default_priority == workers.task_default_priority == 6


def test_a_republished_analysis_keeps_its_priority(bench: Bench) -> None:
    broker = publisher.CeleryBroker(bench.settings)
    broker.publish_analyze(bench.payload.model_copy(update={"analysis_id": 99}))  # routine
    stat = bench.payload.model_copy(update={"priority": "stat"})
    broker.publish_analyze(stat)  # published second, served first
    (first, second) = queued_messages(bench.client, model_queue(stat.model_id))
    assert (first["headers"]["id"], first["properties"]["priority"]) == (stat.task_id, 0)
    assert (second["headers"]["id"], second["properties"]["priority"]) == ("analyze:99", 6)


def test_sweeper_republishes_a_lost_task_once_per_deadline_and_never_a_held_one(
    bench: Bench,
) -> None:
    sweeper = StallSweeper(bench.ledger, bench.settings)
    task_id = bench.payload.task_id
    assert sweeper.interval == STALL / 4
    assert sweeper.sweep().stalled == 0  # running, but not for long

    sweeper.broker.publish_analyze(bench.payload)  # as route_study did
    busy = bench.start_worker()
    wait_for(lambda: bench.runs, 60, "the FAKE worker to start the task")
    result = sweeper.sweep(_later())
    assert (result.stalled, result.held, result.republished) == (1, 1, 0)  # a live worker has it

    busy.kill()  # kill -9 of the worker's main process; its pool child dies with it
    busy.wait()
    child = int(bench.runs[0].split()[1])
    wait_for(lambda: not Path(f"/proc/{child}").exists(), 10, "the pool child to die")
    assert bench.queued() == []  # the message is stuck, unacknowledged, in Redis
    result = sweeper.sweep(_later())
    assert (result.stalled, result.held, result.republished) == (1, 0, 1)
    assert bench.analysis() == (
        AnalysisState.RUNNING,
        1,
        "re-published: worker lost (attempt 1)",
    )
    assert bench.queued() == [task_id]

    assert sweeper.sweep().stalled == 0  # its clock restarted: not again before the deadline
    result = sweeper.sweep(_later())  # past it, but the message still waits in its queue
    assert (result.stalled, result.held, result.republished) == (1, 1, 0)
    assert bench.queued() == [task_id]

    (bench.tmp_path / "release").touch()
    bench.start_worker()  # a worker comes back and runs the task again, to the end
    wait_for(lambda: len(bench.runs) == 2, 60, "the task to run again")
    wait_for(lambda: not bench.queued(), 10, "the queue to drain")
    assert [r.split()[0] for r in bench.runs] == [task_id, task_id]


def test_sweeper_fails_an_analysis_after_max_requeues(
    bench: Bench, caplog: pytest.LogCaptureFixture
) -> None:
    old = _running_analysis(bench.ledger, "fake-model", dispatched=False)  # a 0.2 row
    sweeper = StallSweeper(bench.ledger, bench.settings)
    for attempt in (1, 2):  # each time, the worker that took it died (its message is gone)
        result = sweeper.sweep(_later())
        assert (result.stalled, result.republished, result.no_payload) == (2, 1, 1)
        assert bench.analysis()[:2] == (AnalysisState.RUNNING, attempt)
        assert bench.queued() == [bench.payload.task_id]
        bench.client.delete(*queue_keys(model_queue(bench.payload.model_id)))

    with caplog.at_level(logging.WARNING, logger="dicom_node.ingest.recovery"):
        result = sweeper.sweep(_later())
    assert (result.republished, result.failed) == (0, 1)
    state, requeues, reason = bench.analysis()
    assert (state, requeues) == (AnalysisState.FAILED, 2)
    assert reason is not None and "lost 3 times" in reason
    assert bench.queued() == []
    assert sweeper.sweep(_later()).stalled == 1  # only the old row, left alone
    old_row = bench.ledger.get_analysis(old.analysis_id)
    assert old_row is not None and old_row.state is AnalysisState.RUNNING
    assert caplog.text.count(f"analysis {old.analysis_id} is running past") <= 1  # logged once


def test_sweeper_skips_a_round_while_the_broker_is_down(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path, broker_url=f"redis://127.0.0.1:{free_port()}/0", analysis_stall_seconds=STALL
    )
    ledger = Ledger(settings.resolved_ledger_url)
    payload = _running_analysis(ledger, "fake-model")
    started = time.monotonic()
    result = StallSweeper(ledger, settings).sweep(_later())
    assert result.broker_down and result.republished == 0
    assert time.monotonic() - started < 10
    analysis = ledger.get_analysis(payload.analysis_id)
    assert analysis is not None and analysis.requeues == 0
    ledger.dispose()


# --- route_study and a broker that goes away -------------------------------------------------


def test_route_study_waits_for_the_broker_instead_of_dropping_the_study(
    tmp_path: Path, models_dir: Path, cr_path: Path
) -> None:
    from workers.app import create_app
    from workers.context import init_context

    port = free_port()
    settings = _settings(
        tmp_path,
        models_dir=models_dir,
        broker_url=f"redis://127.0.0.1:{port}/0",  # Redis is down when the task runs
        allow_demo_weights=True,
        models=CHEST,
    )
    ctx = init_context(settings)
    app = create_app(settings, with_results=False)
    ds = _instance(cr_path, generate_uid())
    path = _put(Spool(settings.data_dir / "spool"), ds)
    study_uid = str(ds.StudyInstanceUID)
    ctx.ledger.record_instance(
        InstanceRecord(
            study_uid,
            None,
            str(ds.SOPInstanceUID),
            CR_CLASS,
            ExplicitVRLittleEndian,
            str(path),
            "M",
        )
    )
    ctx.ledger.transition_study(study_uid, 1, StudyState.QUEUED)
    request = RouteStudy(study_uid=study_uid, generation=1, paths=[str(path)], calling_ae="M")
    results: list[Any] = []
    runner = threading.Thread(
        target=lambda: results.append(
            app.tasks[ROUTE_TASK].apply(kwargs={"request": request.model_dump()})
        )
    )
    server = None
    try:
        runner.start()
        wait_for(lambda: (v := ctx.ledger.get(study_uid)) and v.analyses, 60, "the analysis row")
        time.sleep(3)  # the outage outlasts Celery's default publish retries (under 1 s)
        assert runner.is_alive()  # route still waits for the broker
        server = start_redis(port, tmp_path)
        runner.join(60)
        assert results and results[0].successful(), results and results[0].traceback
        view = ctx.ledger.get(study_uid)
        assert view is not None and view.study.state is StudyState.ROUTED
        (analysis,) = view.analyses
        messages = queued_messages(redis.Redis(port=port), model_queue(CHEST))
        assert [m["headers"]["id"] for m in messages] == [
            f"analyze:{analysis.analysis.id}"
        ]
        (stored,) = _column(ctx.ledger, "SELECT payload FROM analyses")
        assert Analyze.model_validate_json(stored).task_id == f"analyze:{analysis.analysis.id}"
    finally:
        runner.join(60)
        ctx.ledger.dispose()
        if server is not None:
            server.terminate()
            server.wait(10)
