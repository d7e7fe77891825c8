"""Kill -9 at the worst moments: nothing acknowledged is lost, nothing is done twice.

All real processes: ``dicom-node scp`` and ``dicom-node up`` as subprocesses
(real Redis, real Celery worker, real SCP), pynetdicom and dcmtk peers over
loopback, dcmtk's storescp as the PACS.

1. The SCP, in the middle of an association sending a 10 MB image.
2. The Celery worker process during inference: its message stays
   unacknowledged in Redis; the SCP's stall sweeper publishes it again.
3. The same with two studies' analyses running in the worker's threads, their
   images in the same batches: both are published again, each delivered once.
   (The worker runs Celery's threads pool: there is no pool child process.)
4. Redis: test_outage covers C-STORE and enqueueing while Redis is down;
   here Redis dies while studies wait in its queues, and ``up`` restarts it
   from its AOF.

A PACS outage is ``tests/test_e2e.py::test_pacs_outage_delays_delivery_until_it_returns``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt

from dicom_node.app.samples import mixed_study
from dicom_node.core.contract import ROUTE_QUEUE
from dicom_node.core.ledger import (
    AnalysisSnapshot,
    AnalysisState,
    DeliveryState,
    Ledger,
    StudyState,
)
from dicom_node.core.settings import Settings
from dicom_node.ingest.spool import INCOMING
from tests.conftest import (
    dcmtk_env,
    free_port,
    queued_messages,
    require_tool,
    wait_for,
    with_new_uids,
)
from tests.test_e2e import push, start_node, start_pacs, stop_node

DX_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR_CLASS = "1.2.840.10008.5.1.4.1.1.1"
ICH, CHEST = "ich-headct-densenet121-rsna2019", "xrv-densenet121-res224-all"
STALL_SECONDS = 10


# --- helpers -----------------------------------------------------------------------------


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _children(pid: int) -> list[int]:
    return [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _ppid(int(p.name)) == pid
    ]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _child(pid: int, marker: str) -> int | None:
    found = [c for c in _children(pid) if marker in _cmdline(c)]
    return found[0] if len(found) == 1 else None


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() or _ppid(pid) is None


def _dx(cr_path: Path, target: Path, study_uid: str) -> Path:
    """A 2048x2500 16-bit DX (10 MB) built from the real chest CR, padded."""
    ds = dcmread(cr_path)
    pixels = np.zeros((2500, 2048), dtype=np.uint16)
    source = ds.pixel_array[:2500, :2048]
    pixels[: source.shape[0], : source.shape[1]] = source
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.tobytes()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = DX_CLASS
    ds.Modality = "DX"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(target, enforce_file_format=True)
    return target


def _store(port: int, files: list[Path], paced: bool = False) -> list[int]:
    """C-STORE ``files`` in one association; return the statuses (empty ones if it died).

    ``paced``: wait 20 ms after each PDU sent (64 KB PDUs), so a 10 MB data set
    takes a few seconds and the test can act in the middle of it.
    """
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(DX_CLASS, ExplicitVRLittleEndian)
    ae.add_requested_context(CR_CLASS, ExplicitVRLittleEndian)
    handlers = [(evt.EVT_DATA_SENT, lambda _event: time.sleep(0.02))] if paced else []
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_NODE", evt_handlers=handlers)
    assert assoc.is_established
    statuses = []
    try:
        for path in files:
            rsp = assoc.send_c_store(dcmread(path))
            statuses.append(int(rsp.Status) if "Status" in rsp else -1)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


def _start_scp(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dicom_node.app.cli", "scp"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    echo = [require_tool("echoscu"), "-aec", "DICOM_NODE", "127.0.0.1", env["DICOM_NODE_PORT"]]
    wait_for(
        lambda: (
            proc.poll() is None
            and subprocess.run(echo, env=dcmtk_env(), capture_output=True).returncode == 0
        ),
        60,
        "the SCP",
        interval=0.2,
    )
    return proc


def _ledger(data_dir: Path) -> Ledger:
    return Ledger(Settings(data_dir=data_dir).resolved_ledger_url, upgrade=False)


# --- 1. the SCP ---------------------------------------------------------------------------


def test_scp_killed_mid_association_leaves_no_partial_instance(
    tmp_path: Path, redis_url: str, cr_path: Path
) -> None:
    db = int(tmp_path.stat().st_ino % 15) + 1
    broker = redis_url.rsplit("/", 1)[0] + f"/{db}"
    client = redis.Redis.from_url(broker)
    client.flushdb()
    data_dir = tmp_path / "node"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE_")}
    env |= {
        "DICOM_NODE_DATA_DIR": str(data_dir),
        "DICOM_NODE_HOST": "127.0.0.1",
        "DICOM_NODE_PORT": str(free_port()),
        "DICOM_NODE_BROKER_URL": broker,
        "DICOM_NODE_STUDY_QUIET_SECONDS": "0.5",
        "DICOM_NODE_MAX_PDU_SIZE": "65536",
    }
    study_uid = generate_uid()
    dx = _dx(cr_path, tmp_path / "dx.dcm", study_uid)
    cr = with_new_uids(cr_path, tmp_path / "cr.dcm")
    ds = dcmread(cr)
    ds.StudyInstanceUID = study_uid
    ds.save_as(cr, enforce_file_format=True)
    spool = data_dir / "spool"

    scp = _start_scp(env, tmp_path / "scp.log")
    incoming = spool / INCOMING / str(scp.pid)
    sent: list[list[int]] = []

    def send() -> None:
        try:
            sent.append(_store(int(env["DICOM_NODE_PORT"]), [dx], paced=True))
        except Exception as exc:  # the association died with the SCP
            sent.append([-1])
            print(f"sender: {exc.__class__.__name__}")

    sender = threading.Thread(target=send)
    try:
        sender.start()
        partial = wait_for(
            lambda: [p for p in incoming.glob("*") if p.stat().st_size > 1_000_000],
            30,
            "the DX to be half received",
            interval=0.01,
        )
        scp.send_signal(signal.SIGKILL)
        scp.wait(10)
        sender.join(30)
    finally:
        if scp.poll() is None:
            scp.kill()
            scp.wait()
    assert sent and sent[0] != [0]  # the modality never got Success
    (half,) = partial
    assert half.exists() and half.stat().st_size < dx.stat().st_size  # the crash left it
    assert not (spool / study_uid).exists()  # nothing under a final name
    ledger = _ledger(data_dir)
    assert ledger.get(study_uid) is None
    ledger.dispose()

    scp = _start_scp(env, tmp_path / "scp.log")
    try:
        assert not incoming.exists()  # reconciled before it listened
        assert not (spool / study_uid).exists()
        assert _store(int(env["DICOM_NODE_PORT"]), [dx, cr]) == [0, 0]  # the modality re-sends
        ledger = _ledger(data_dir)
        view = wait_for(
            lambda: (v := ledger.get(study_uid)) and v.study.task_id and v,
            30,
            "the study to be queued",
        )
        assert view.study.state is StudyState.QUEUED and view.study.instance_count == 2
        assert view.study.generation == 1
        ledger.dispose()
        messages = queued_messages(client, ROUTE_QUEUE)
        assert [m["headers"]["id"] for m in messages] == [f"route:{study_uid}:1"]
        assert sorted(p.name for p in (spool / study_uid).iterdir()) == sorted(
            f"{dcmread(f, stop_before_pixels=True).SOPInstanceUID}.dcm" for f in (dx, cr)
        )
    finally:
        scp.send_signal(signal.SIGTERM)
        scp.wait(30)
        client.flushdb()


# --- 2 and 3. the worker --------------------------------------------------------------------


@pytest.fixture()
def pacs(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port, out = free_port(), tmp_path / "pacs"
    proc = start_pacs(port, out)
    yield port, out
    proc.terminate()
    proc.wait(10)


def _analysis(ledger: Ledger, study_uid: str) -> AnalysisSnapshot | None:
    view = ledger.get(study_uid)
    return view.analyses[0].analysis if view and view.analyses else None


def _delivered(ledger: Ledger, study_uid: str) -> bool:
    view = ledger.get(study_uid)
    return bool(
        view
        and view.analyses
        and all(
            r.reports
            and all(d.state is DeliveryState.DELIVERED for rep in r.reports for d in rep.deliveries)
            for r in view.analyses
        )
    )


def _kill_during_inference(
    tmp_path: Path,
    pacs: tuple[int, Path],
    models_dir: Path,
    studies: int = 1,
    **extra: str,
) -> tuple[list[AnalysisSnapshot], dict[str, float]]:
    """Run ``up``, push ``studies`` 16-slice head CT studies, kill -9 the worker process
    while all their analyses run, wait for every delivery, stop ``up``.

    Returns the final analyses and the seconds from the kill to the first
    re-publication, the last report and the last delivery.
    """
    proc, env = start_node(
        tmp_path,
        pacs[0],
        models_dir,
        DICOM_NODE_MODELS=ICH,
        DICOM_NODE_ANALYSIS_STALL_SECONDS=str(STALL_SECONDS),
        **extra,
    )
    ledger = _ledger(tmp_path / "node")
    try:
        sent = [mixed_study(tmp_path / f"study{i}", ct_slices=16) for i in range(studies)]
        push(env["port"], *(p for s in sent for p in s.files if p.name.startswith("ct")))
        worker = _child(proc.pid, "cli worker")
        assert worker is not None
        assert not _children(worker)  # the threads pool: one process, no pool children

        def claimed() -> bool:  # one-row reads: the first analyses of this new ledger
            found = [ledger.get_analysis(i) for i in range(1, studies + 1)]
            return all(a is not None and a.state is AnalysisState.RUNNING for a in found)

        wait_for(claimed, 120, "every analysis to run", interval=0.01)
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()
        for study in sent:
            view = ledger.get(study.study_uid)
            assert view is not None and view.analyses[0].analysis.state is AnalysisState.RUNNING
            assert not view.analyses[0].reports  # killed before any report was written
        times: dict[str, float] = {}

        def progress() -> bool:
            found = [_analysis(ledger, s.study_uid) for s in sent]
            assert all(a is not None for a in found)
            if any(a.requeues for a in found if a) and "republished" not in times:
                times["republished"] = time.monotonic() - killed
            reported = all(a.state is AnalysisState.REPORTED for a in found if a)
            if reported and "reported" not in times:
                times["reported"] = time.monotonic() - killed
            return reported and all(_delivered(ledger, s.study_uid) for s in sent)

        wait_for(progress, 240, "every report delivered after the kill", interval=0.1)
        times["delivered"] = time.monotonic() - killed
        finals = [_analysis(ledger, s.study_uid) for s in sent]
        srs = wait_for(
            lambda: len(f := list(pacs[1].iterdir())) >= studies and f, 10, "the SR files"
        )
        assert len(srs) == studies  # exactly one per study
        reports = {
            r.report.sop_instance_uid
            for s in sent
            for r in ledger.get(s.study_uid).analyses[0].reports  # type: ignore[union-attr]
        }
        assert {dcmread(sr).SOPInstanceUID for sr in srs} == reports
    finally:
        ledger.dispose()
        log = stop_node(proc, env)
    assert len(list(pacs[1].iterdir())) == studies  # still one SR each once all has stopped
    for study in sent:
        assert study.patient_name not in log and study.patient_id not in log
    assert all(a is not None for a in finals)
    return [a for a in finals if a is not None], times


@pytest.mark.e2e
def test_worker_main_process_killed_during_inference(
    tmp_path: Path, pacs: tuple[int, Path], models_dir: Path, record_property: Callable[..., None]
) -> None:
    (final,), times = _kill_during_inference(tmp_path, pacs, models_dir)
    assert final.state is AnalysisState.REPORTED
    assert final.requeues == 1  # the stall sweeper published it again, once
    print(f"worker main process kill -9: {times}")
    for name, seconds in times.items():
        record_property(f"main_kill_{name}_s", round(seconds, 1))
    assert times["republished"] < STALL_SECONDS + 15


@pytest.mark.e2e
def test_worker_killed_with_a_batch_of_two_studies_in_flight(
    tmp_path: Path, pacs: tuple[int, Path], models_dir: Path, record_property: Callable[..., None]
) -> None:
    """The threads pool has no child process to kill (it replaced the prefork test of a
    pool child killed): here the one worker process dies while two studies' analyses
    run in its threads, their images sharing the batcher (a 500 ms batch deadline, so
    batches collect images of both). Each is published again and delivered once."""
    finals, times = _kill_during_inference(
        tmp_path,
        pacs,
        models_dir,
        studies=2,
        DICOM_NODE_WORKER_CONCURRENCY="4",
        DICOM_NODE_BATCH_MAX_DELAY_MS="500",
    )
    assert [a.state for a in finals] == [AnalysisState.REPORTED] * 2
    assert [a.requeues for a in finals] == [1, 1]  # each published again, once
    print(f"worker kill -9 with two studies in flight: {times}")
    for name, seconds in times.items():
        record_property(f"two_studies_kill_{name}_s", round(seconds, 1))


# --- 4. Redis -------------------------------------------------------------------------------


@pytest.mark.e2e
def test_redis_killed_while_studies_are_queued(
    tmp_path: Path, pacs: tuple[int, Path], models_dir: Path, cr_path: Path
) -> None:
    proc, env = start_node(
        tmp_path,
        pacs[0],
        models_dir,
        DICOM_NODE_MODELS=CHEST,
        DICOM_NODE_ANALYSIS_STALL_SECONDS=str(STALL_SECONDS),
    )
    ledger = _ledger(tmp_path / "node")
    try:
        files = [with_new_uids(cr_path, tmp_path / f"cr{i}.dcm") for i in range(6)]
        studies = [str(dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files]
        push(env["port"], *files)

        def queued() -> list[str]:
            out = []
            for uid in studies:
                view = ledger.get(uid)
                if view and (
                    view.study.state is StudyState.QUEUED
                    or any(a.analysis.state is AnalysisState.QUEUED for a in view.analyses)
                ):
                    out.append(uid)
            return out

        def routing() -> bool:  # the worker is at work, and at least 3 studies still wait
            started = any((v := ledger.get(uid)) and v.analyses for uid in studies)
            return started and len(queued()) >= 3

        wait_for(routing, 120, "the worker busy and studies waiting in Redis", interval=0.05)
        redis_pid = _child(proc.pid, "redis-server")
        assert redis_pid is not None
        os.kill(redis_pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(
            lambda: all(_delivered(ledger, uid) for uid in studies),
            180,
            "every study delivered after Redis came back",
            interval=0.5,
        )
        print(
            f"Redis kill -9: all {len(studies)} studies delivered after "
            f"{time.monotonic() - killed:.1f} s"
        )
        srs = wait_for(
            lambda: len(f := list(pacs[1].iterdir())) >= len(studies) and f, 10, "the SR files"
        )
        assert len(srs) == len(studies)  # one SR each, none twice
    finally:
        ledger.dispose()
        log = stop_node(proc, env)
    assert "redis-server died" in log
    assert len(list(pacs[1].iterdir())) == len(studies)
