"""What the C-STORE handler guards: durability before Success, UIDs from the network,
whole data sets, the loop guard, identical re-sends and backpressure (0xA700).

Real associations over loopback (pynetdicom SCUs, dcmtk storescu). The Celery
publisher is ``RecordingPublisher`` (a FAKE, from test_scp) except in the loop
test, which runs the whole node (`dicom-node up`) against dcmtk's storescp as
the PACS.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset, FileMetaDataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from dicom_node.core import dimse
from dicom_node.core.ledger import InstanceRole, StudyState
from dicom_node.core.settings import Settings
from dicom_node.ingest.scp import StoreSCP
from tests.conftest import dcmtk_env, free_port, require_tool, wait_for
from tests.test_scp import CR_CLASS, RecordingPublisher

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR


def _node(tmp_path: Path, **extra: object) -> tuple[StoreSCP, RecordingPublisher]:
    settings = Settings(
        data_dir=tmp_path / "node",
        host="127.0.0.1",
        port=free_port(),
        study_quiet_seconds=0.3,
        **extra,  # type: ignore[arg-type]
    )
    sender = RecordingPublisher()
    scp = StoreSCP(settings, publish=sender)
    scp.start()
    return scp, sender


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[tuple[StoreSCP, RecordingPublisher]]:
    scp, sender = _node(tmp_path)
    yield scp, sender
    scp.stop()


def _send(port: int, *items: Dataset | Path, sop_class: str = CR_CLASS) -> list[int]:
    """C-STORE each item in one association; Paths are sent as their raw bytes."""
    from pynetdicom import _config

    ae = AE(ae_title="GUARD_SCU")
    ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_NODE")
    assert assoc.is_established
    statuses = []
    try:
        for item in items:
            _config.STORE_SEND_CHUNKED_DATASET = isinstance(item, Path)
            try:
                statuses.append(int(assoc.send_c_store(item).Status))
            finally:
                _config.STORE_SEND_CHUNKED_DATASET = False
    finally:
        assoc.release()
    return statuses


def _cr(cr_path: Path, **attrs: str) -> Dataset:
    ds = dcmread(cr_path)
    ds.StudyInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def _files_outside(root: Path, spool: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and spool not in p.parents]


def test_success_only_after_fsync_and_rename(
    node: tuple[StoreSCP, RecordingPublisher], cr_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scp, _ = node
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        real_fsync(fd)
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(os, "fsync", recording_fsync)
    ds = _cr(cr_path)
    assert _send(scp.port, ds) == [dimse.SUCCESS]
    final = scp.spool.path_for(ds.StudyInstanceUID, ds.SOPInstanceUID)
    # When the SCU had its answer: the file was fsynced (under its incoming
    # name), renamed into place, and its directory fsynced.
    assert any("/.incoming/" in p for p in synced)
    assert str(final.parent) in synced
    assert dcmread(final).SOPInstanceUID == ds.SOPInstanceUID
    assert scp.ledger.instance_exists(ds.SOPInstanceUID)
    assert not any(scp.spool.root.joinpath(".incoming").rglob("*.dcm"))


@pytest.mark.parametrize(
    "study_uid",
    ["../../tmp/x", "1.2." + "3" * 200, "1.2.abc.4", "1.2.826.", ".1.2", "1..2"],
    ids=["traversal", "202-chars", "non-digits", "trailing-dot", "leading-dot", "empty-part"],
)
def test_malformed_study_uid_is_refused_before_any_path(
    node: tuple[StoreSCP, RecordingPublisher], cr_path: Path, tmp_path: Path, study_uid: str
) -> None:
    scp, sender = node
    ds = _cr(cr_path)
    ds.StudyInstanceUID = study_uid
    raw = tmp_path / "bad.dcm"
    ds.save_as(raw, enforce_file_format=True)
    assert _send(scp.port, raw) == [dimse.CANNOT_UNDERSTAND]
    assert _files_outside(tmp_path / "node", scp.spool.root) == [
        p for p in _files_outside(tmp_path / "node", scp.spool.root) if "ledger" in p.name
    ]
    assert not list(scp.spool.root.rglob("*.dcm")) and scp.ledger.studies() == []
    assert sender.sent == []


def test_data_set_cut_inside_its_study_uid_is_refused(
    node: tuple[StoreSCP, RecordingPublisher], cr_path: Path, tmp_path: Path
) -> None:
    scp, _ = node
    ds = _cr(cr_path)
    whole = tmp_path / "whole.dcm"
    ds.save_as(whole, enforce_file_format=True)
    data = whole.read_bytes()
    start = data.rindex(ds.StudyInstanceUID.encode())
    for cut in (start + 8, len(data) - 1000):  # inside the Study UID; inside the pixel data
        short = tmp_path / f"cut-{cut}.dcm"
        short.write_bytes(data[:cut])
        assert _send(scp.port, short) == [dimse.CANNOT_UNDERSTAND]
    assert scp.ledger.studies() == [] and not list(scp.spool.root.rglob("*.dcm"))
    assert _send(scp.port, whole) == [dimse.SUCCESS]  # the whole one is fine


def test_identical_resend_is_stored_once_and_never_reopens(
    node: tuple[StoreSCP, RecordingPublisher], cr_path: Path
) -> None:
    scp, sender = node
    ds = _cr(cr_path)
    assert _send(scp.port, ds) == [dimse.SUCCESS]
    wait_for(lambda: sender.sent, 10, "the study's task")
    final = scp.spool.path_for(ds.StudyInstanceUID, ds.SOPInstanceUID)
    before = final.stat().st_ino
    assert _send(scp.port, ds, ds) == [dimse.SUCCESS, dimse.SUCCESS]
    time.sleep(1.0)  # several quiet periods: a reopened study would be published again
    assert final.stat().st_ino == before  # not even rewritten
    view = scp.ledger.get(ds.StudyInstanceUID)
    assert view is not None and view.study.generation == 1 and view.study.instance_count == 1
    assert len(sender.sent) == 1


def _sr_for(study_uid: str, manufacturer: str = "Some PACS") -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SR_CLASS, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.Modality, ds.Manufacturer = "SR", manufacturer
    ds.ValueType = "CONTAINER"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def test_non_image_objects_never_start_or_reopen_a_study(
    node: tuple[StoreSCP, RecordingPublisher], cr_path: Path
) -> None:
    scp, sender = node
    lone_sr = _sr_for(generate_uid())
    assert _send(scp.port, lone_sr, sop_class=SR_CLASS) == [dimse.SUCCESS]
    ds = _cr(cr_path)
    assert _send(scp.port, ds) == [dimse.SUCCESS]
    wait_for(lambda: sender.sent, 10, "the image study's task")
    # Later an SR (somebody's report) and one of ours arrive for the routed study.
    theirs, ours = _sr_for(ds.StudyInstanceUID), _sr_for(ds.StudyInstanceUID, "dicom-node")
    assert _send(scp.port, theirs, ours, sop_class=SR_CLASS) == [dimse.SUCCESS] * 2
    time.sleep(1.0)
    assert [p.study_uid for p in sender.sent] == [ds.StudyInstanceUID]
    view = scp.ledger.get(ds.StudyInstanceUID)
    assert view is not None and view.study.generation == 1
    assert view.study.state is StudyState.QUEUED
    assert scp.ledger.instance_paths(ds.StudyInstanceUID) == [
        str(scp.spool.path_for(ds.StudyInstanceUID, ds.SOPInstanceUID))
    ]
    lone = scp.ledger.get(lone_sr.StudyInstanceUID)
    assert lone is not None and lone.study.state is StudyState.NOT_APPLICABLE
    assert lone.study.generation == 0
    # All three objects are stored, for the record.
    for sr in (lone_sr, theirs, ours):
        assert scp.ledger.instance_exists(sr.SOPInstanceUID)
    assert InstanceRole.OWN_OUTPUT.value == "own_output"


def test_backpressure_refuses_with_a700_and_recovers(
    node: tuple[StoreSCP, RecordingPublisher], cr_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scp, sender = node
    bp = scp.backpressure
    base = bp.settings

    bp.settings = base.model_copy(update={"min_free_disk_mb": 1e12})
    assert _send(scp.port, _cr(cr_path)) == [dimse.OUT_OF_RESOURCES]
    assert "DICOM_NODE_MIN_FREE_DISK_MB" in caplog.text

    bp.settings = base.model_copy(update={"spool_quota_mb": 0.5})  # below one CR
    assert _send(scp.port, _cr(cr_path)) == [dimse.OUT_OF_RESOURCES]
    assert "DICOM_NODE_SPOOL_QUOTA_MB" in caplog.text

    bp.settings = base
    first = _cr(cr_path)
    assert _send(scp.port, first) == [dimse.SUCCESS]  # room again: on its own
    wait_for(lambda: sender.sent, 10, "the first study's task")

    bp.settings = base.model_copy(update={"max_pending_studies": 1})
    bp._pending_at = -1e9  # count now, not in a second
    assert _send(scp.port, _cr(cr_path)) == [dimse.OUT_OF_RESOURCES]  # a new study waits
    assert "DICOM_NODE_MAX_PENDING_STUDIES" in caplog.text
    # The workers finish the first study: room for the next one.
    scp.ledger.transition_study(first.StudyInstanceUID, 1, StudyState.NOT_APPLICABLE)
    bp._pending_at = -1e9
    assert _send(scp.port, _cr(cr_path)) == [dimse.SUCCESS]


@pytest.mark.e2e
def test_a_pacs_that_forwards_everything_back_gets_one_report(
    tmp_path: Path, models_dir: Path, cr_path: Path
) -> None:
    """The loop from the issue: a PACS routing rule forwards each new instance to the node.

    The node (`dicom-node up`) reports to dcmtk's storescp (the PACS). The PACS's
    forwarding rule is played by dcmtk's storescu: it sends the study back,
    image and our SR. One SR, not a new generation and a second, third … SR.
    """
    from tests.conftest import with_new_uids
    from tests.test_e2e import push, start_node, start_pacs, status, stop_node

    pacs_port, pacs_dir = free_port(), tmp_path / "pacs"
    pacs = start_pacs(pacs_port, pacs_dir)
    proc, env = start_node(
        tmp_path, pacs_port, models_dir, DICOM_NODE_MODELS="xrv-densenet121-res224-all"
    )
    try:
        image = with_new_uids(cr_path, tmp_path / "chest.dcm")
        study_uid = str(dcmread(image, stop_before_pixels=True).StudyInstanceUID)
        push(env["port"], image)
        (sr,) = wait_for(lambda: list(pacs_dir.iterdir()), 180, "the SR at the PACS")
        forward = [require_tool("storescu"), "-aet", "PACS", "-aec", "DICOM_NODE"]
        forward += ["-R", "127.0.0.1", env["port"], str(image), str(sr)]  # -R: the files' classes
        for _ in range(2):  # the rule fires for each new instance the PACS stores
            out = subprocess.run(forward, env=dcmtk_env(), capture_output=True, text=True)
            assert out.returncode == 0, out.stderr
        # Long enough for any reopened study to finish its quiet period and run.
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            assert len(list(pacs_dir.iterdir())) == 1
            time.sleep(0.5)
        view = status(env)[study_uid]
        assert view["generation"] == 1 and view["state"] == "routed"
        (analysis,) = view["analyses"]  # type: ignore[misc]
        assert analysis["state"] == "reported"
    finally:
        log = stop_node(proc, env)
        pacs.terminate()
        pacs.wait(10)
    assert "own_output: never analysed" in log
