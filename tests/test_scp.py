"""The SCP over real loopback associations, with dcmtk peers and pynetdicom SCUs.

The Celery publisher is replaced by ``RecordingPublisher`` (a FAKE: it records
the tasks the SCP would publish) so these tests isolate the listener;
test_outage uses the real publisher and Redis, test_e2e the whole chain.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from dicom_node.core import dimse
from dicom_node.core.contract import RouteStudy
from dicom_node.core.errors import EnqueueError
from dicom_node.core.ledger import StudyState
from dicom_node.core.settings import Settings
from dicom_node.ingest.scp import StoreSCP
from tests.conftest import dcmtk_env, disk_full, free_port, require_tool, wait_for

CR_CLASS = "1.2.840.10008.5.1.4.1.1.1"


@dataclass
class RecordingPublisher:
    """FAKE Celery publisher: records the route_study payloads the SCP publishes."""

    sent: list[RouteStudy] = field(default_factory=list)
    down: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, payload: RouteStudy) -> None:
        if self.down:
            raise EnqueueError("broker down (fake)")
        with self.lock:
            self.sent.append(payload)


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[tuple[StoreSCP, RecordingPublisher]]:
    settings = Settings(
        data_dir=tmp_path, host="127.0.0.1", port=free_port(), study_quiet_seconds=0.5
    )
    sender = RecordingPublisher()
    scp = StoreSCP(settings, publish=sender)
    scp.start()
    yield scp, sender
    scp.stop()


def _scu_store(port: int, ds, sop_class: str = CR_CLASS) -> int:  # type: ignore[no-untyped-def]
    ae = AE(ae_title="TEST_SCU")
    ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_NODE")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def test_echoscu(node: tuple[StoreSCP, RecordingPublisher]) -> None:
    scp, _ = node
    out = subprocess.run(
        [require_tool("echoscu"), "-aec", "DICOM_NODE", "127.0.0.1", str(scp.port)],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr


def test_storescu_study_is_durable_and_enqueued_once(
    node: tuple[StoreSCP, RecordingPublisher], cr_path: Path, cr_j2k_path: Path
) -> None:
    scp, sender = node
    out = subprocess.run(
        [
            require_tool("storescu"),
            "-aet",
            "MODALITY1",
            "-aec",
            "DICOM_NODE",
            "-xv",  # propose JPEG 2000 lossless and uncompressed
            "127.0.0.1",
            str(scp.port),
            str(cr_path),
            str(cr_j2k_path),
        ],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    source = dcmread(cr_path, stop_before_pixels=True)
    stored = sorted((scp.spool.root / source.StudyInstanceUID).glob("*.dcm"))
    assert len(stored) == 2  # on disk when storescu got its responses
    # The J2K copy is stored as sent, compressed: bytes, not decoded pixels.
    j2k = dcmread(scp.spool.path_for(source.StudyInstanceUID, dcmread(cr_j2k_path).SOPInstanceUID))
    assert j2k.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
    # The monitor publishes, then records the task id: wait for both.
    wait_for(
        lambda: (v := scp.ledger.get(source.StudyInstanceUID)) and v.study.task_id,
        10,
        "the study's task",
    )
    view = scp.ledger.get(source.StudyInstanceUID)
    assert view is not None and view.study.state is StudyState.QUEUED
    assert view.study.calling_ae == "MODALITY1" and view.study.instance_count == 2
    assert len(sender.sent) == 1
    payload = sender.sent[0]
    assert (payload.study_uid, payload.generation) == (source.StudyInstanceUID, 1)
    assert payload.calling_ae == "MODALITY1"
    assert sorted(payload.paths) == [str(p) for p in stored]
    assert view.study.task_id == payload.task_id


def test_missing_study_uid_is_cannot_understand(
    node: tuple[StoreSCP, RecordingPublisher], cr_path: Path
) -> None:
    scp, sender = node
    ds = dcmread(cr_path)
    del ds.StudyInstanceUID
    assert _scu_store(scp.port, ds) == dimse.CANNOT_UNDERSTAND
    assert not scp.spool.root.exists() or not list(scp.spool.root.rglob("*.dcm"))
    assert scp.ledger.studies() == [] and sender.sent == []


def test_sop_class_mismatch(
    node: tuple[StoreSCP, RecordingPublisher],
    cr_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pynetdicom import _config

    # Send the file as it is, with the SOP Class UID of its meta header.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    scp, _ = node
    ds = dcmread(cr_path)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT in the data set ...
    mismatched = tmp_path / "mismatch.dcm"
    ds.save_as(mismatched, enforce_file_format=True)
    # ... and CR in the file meta, which pynetdicom sends as the Affected SOP Class UID.
    raw = mismatched.read_bytes()
    ct_uid, cr_uid = b"1.2.840.10008.5.1.4.1.1.2\x00", CR_CLASS.encode() + b"\x00"
    assert raw.index(ct_uid) < raw.index(b"\x08\x00\x16\x00")  # first hit is the meta
    mismatched.write_bytes(raw.replace(ct_uid, cr_uid, 1))
    assert _scu_store(scp.port, mismatched) == dimse.DATASET_DOES_NOT_MATCH_SOP_CLASS


def test_disk_full_answers_out_of_resources(
    node: tuple[StoreSCP, RecordingPublisher], cr_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scp, _ = node

    monkeypatch.setattr(os, "fsync", disk_full)
    assert _scu_store(scp.port, dcmread(cr_path)) == dimse.OUT_OF_RESOURCES
    monkeypatch.undo()
    assert _scu_store(scp.port, dcmread(cr_path)) == dimse.SUCCESS  # retried later: kept


def test_broker_down_delays_but_keeps_the_study(
    node: tuple[StoreSCP, RecordingPublisher], cr_path: Path
) -> None:
    scp, sender = node
    sender.down = True
    assert _scu_store(scp.port, dcmread(cr_path)) == dimse.SUCCESS
    study_uid = dcmread(cr_path, stop_before_pixels=True).StudyInstanceUID
    wait_for(lambda: (s := scp.ledger.get(study_uid)) and s.study.reason, 10, "a failed enqueue")
    view = scp.ledger.get(study_uid)
    assert view is not None and view.study.state is StudyState.RECEIVING
    sender.down = False
    wait_for(lambda: sender.sent, 10, "the enqueue after the broker came back")
    assert [s.study_uid for s in sender.sent] == [study_uid]
