"""Destinations against real pynetdicom SCPs on loopback: C-STORE, storage commitment, outbox."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    BasicTextSRStorage,
    Comprehensive3DSRStorage,
    SecondaryCaptureImageStorage,
    StorageCommitmentPushModel,
)

from dicom_node.core import dimse
from dicom_node.core.destinations import Destination
from dicom_node.core.errors import DeliveryError, PermanentDeliveryError
from dicom_node.core.settings import Peer, Settings
from tests.conftest import free_port, wait_for
from workers.destinations import Outbound, Sent, send
from workers.destinations.c_store import c_store
from workers.destinations.commitment import STORAGE_COMMITMENT_INSTANCE

PACS_AE = "TEST_PACS"
STUDY = generate_uid()


def make_item(folder: Path, delivery_id: int, sop_class: str = BasicTextSRStorage) -> Outbound:
    """A small Part 10 report file (Explicit VR Little Endian) and its Outbound."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR" if "88." in sop_class else "OT"
    ds.InstanceNumber = delivery_id
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = folder / f"{delivery_id}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return Outbound(delivery_id, path, sop_class, ds.SOPInstanceUID)


@dataclass
class FakePacs:
    """An in-process pynetdicom storage SCP on a free loopback port."""

    statuses: Sequence[int] = ()
    sop_classes: Sequence[str] = (
        BasicTextSRStorage,
        Comprehensive3DSRStorage,
        SecondaryCaptureImageStorage,
    )
    hold: threading.Event | None = None
    commitment: FakeCommitmentScp | None = None
    maximum_associations: int = 10
    received: list[str] = field(default_factory=list)
    associations: int = 0
    port: int = 0

    def start(self) -> FakePacs:
        ae = self.ae = AE(ae_title=PACS_AE)
        ae.require_called_aet = True
        ae.maximum_associations = self.maximum_associations
        for sop_class in self.sop_classes:
            ae.add_supported_context(sop_class)
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_ESTABLISHED, self._on_established),
        ]
        if self.commitment is not None:
            ae.add_supported_context(StorageCommitmentPushModel)
            handlers += [(evt.EVT_N_ACTION, self.commitment.on_action), *self.commitment.handlers]
        self.port = free_port()
        self._server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)
        return self

    def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        self._server.shutdown()

    def destination(self, **extra: Any) -> Destination:
        return Destination(
            name="pacs",
            kind="c_store",
            ae_title=PACS_AE,
            host="127.0.0.1",
            port=self.port,
            **extra,
        )

    def _on_established(self, event: Any) -> None:
        self.associations += 1

    def _on_store(self, event: Any) -> int:
        if self.hold is not None:
            self.hold.wait(30)
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        n = len(self.received) - 1
        return self.statuses[n] if n < len(self.statuses) else dimse.SUCCESS


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", ae_title="NODE_TEST")


@pytest.fixture
def pacs_factory() -> Iterator[Callable[..., FakePacs]]:
    started: list[FakePacs] = []

    def start(**kwargs: Any) -> FakePacs:
        pacs = FakePacs(**kwargs).start()
        started.append(pacs)
        return pacs

    yield start
    for pacs in started:
        pacs.stop()


def verdicts(sent: list[Sent]) -> list[str]:
    return [dimse.delivery_verdict(s.status) for s in sent]


def test_three_items_go_over_one_association(
    tmp_path: Path, settings: Settings, pacs_factory: Callable[..., FakePacs]
) -> None:
    pacs = pacs_factory()
    items = [
        make_item(tmp_path, 1, Comprehensive3DSRStorage),
        make_item(tmp_path, 2, SecondaryCaptureImageStorage),
        make_item(tmp_path, 3, BasicTextSRStorage),
    ]
    sent = send(pacs.destination(), items, settings)
    assert [s.status for s in sent] == [dimse.SUCCESS] * 3
    assert [s.delivery_id for s in sent] == [1, 2, 3]
    assert pacs.received == [i.sop_instance_uid for i in items]
    assert pacs.associations == 1
    assert all(PACS_AE in s.detail for s in sent)


def test_warnings_are_returned_as_statuses(
    tmp_path: Path, settings: Settings, pacs_factory: Callable[..., FakePacs]
) -> None:
    pacs = pacs_factory(statuses=[0xB000, 0xB007])
    sent = send(pacs.destination(), [make_item(tmp_path, 1), make_item(tmp_path, 2)], settings)
    assert [s.status for s in sent] == [0xB000, 0xB007]
    assert verdicts(sent) == ["warning", "warning"]


def test_refused_then_error_each_item_keeps_its_status(
    tmp_path: Path, settings: Settings, pacs_factory: Callable[..., FakePacs]
) -> None:
    pacs = pacs_factory(statuses=[0xA700, 0xC000, dimse.SUCCESS])
    items = [make_item(tmp_path, n) for n in (1, 2, 3)]
    sent = send(pacs.destination(), items, settings)
    assert [s.status for s in sent] == [0xA700, 0xC000, 0x0000]
    assert verdicts(sent) == ["retry", "dead", "delivered"]
    assert pacs.associations == 1


def test_nothing_listening_is_a_delivery_error(tmp_path: Path, settings: Settings) -> None:
    destination = Destination(
        name="pacs",
        kind="c_store",
        ae_title=PACS_AE,
        host="127.0.0.1",
        port=free_port(),
        timeout_seconds=2,
    )
    with pytest.raises(DeliveryError) as caught:
        send(destination, [make_item(tmp_path, 1)], settings)
    assert not isinstance(caught.value, PermanentDeliveryError)


def test_pacs_that_never_answers_c_store_times_out(
    tmp_path: Path, settings: Settings, pacs_factory: Callable[..., FakePacs]
) -> None:
    pacs = pacs_factory(hold=threading.Event())
    items = [make_item(tmp_path, 1), make_item(tmp_path, 2)]
    started = time.monotonic()
    with pytest.raises(DeliveryError) as caught:
        send(pacs.destination(timeout_seconds=2), items, settings)
    elapsed = time.monotonic() - started
    assert not isinstance(caught.value, PermanentDeliveryError)
    assert "no C-STORE response" in str(caught.value)
    assert 1.5 < elapsed < 10, elapsed


def test_peer_that_never_negotiates_times_out(tmp_path: Path, settings: Settings) -> None:
    with socket.socket() as silent:  # the kernel accepts the TCP connection; nobody speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        destination = Destination(
            name="pacs",
            kind="c_store",
            ae_title=PACS_AE,
            host="127.0.0.1",
            port=port,
            timeout_seconds=2,
        )
        started = time.monotonic()
        with pytest.raises(DeliveryError):
            send(destination, [make_item(tmp_path, 1)], settings)
        assert time.monotonic() - started < 10


def test_sop_class_not_accepted_is_0122(
    tmp_path: Path, settings: Settings, pacs_factory: Callable[..., FakePacs]
) -> None:
    pacs = pacs_factory(sop_classes=[Comprehensive3DSRStorage])
    items = [
        make_item(tmp_path, 1, Comprehensive3DSRStorage),
        make_item(tmp_path, 2, SecondaryCaptureImageStorage),
    ]
    sent = send(pacs.destination(), items, settings)
    assert [s.status for s in sent] == [dimse.SUCCESS, dimse.SOP_CLASS_NOT_SUPPORTED]
    assert verdicts(sent) == ["delivered", "dead"]
    assert pacs.received == [items[0].sop_instance_uid]


def test_no_context_accepted_at_all_is_0122_per_item(
    tmp_path: Path, settings: Settings, pacs_factory: Callable[..., FakePacs]
) -> None:
    pacs = pacs_factory(sop_classes=[Comprehensive3DSRStorage])
    items = [make_item(tmp_path, 1, SecondaryCaptureImageStorage)]
    sent = send(pacs.destination(), items, settings)
    assert [s.status for s in sent] == [dimse.SOP_CLASS_NOT_SUPPORTED]
    assert pacs.received == []


def test_wrong_called_ae_is_rejected_permanently(
    tmp_path: Path, settings: Settings, pacs_factory: Callable[..., FakePacs]
) -> None:
    pacs = pacs_factory()
    destination = Destination(
        name="pacs", kind="c_store", ae_title="NOT_THE_PACS", host="127.0.0.1", port=pacs.port
    )
    with pytest.raises(PermanentDeliveryError, match="Rejected Permanent"):
        send(destination, [make_item(tmp_path, 1)], settings)


def test_transient_rejection_is_retried(
    tmp_path: Path, settings: Settings, pacs_factory: Callable[..., FakePacs]
) -> None:
    pacs = pacs_factory(maximum_associations=1)
    other = AE(ae_title="OTHER")
    other.add_requested_context(BasicTextSRStorage)
    busy = other.associate("127.0.0.1", pacs.port, ae_title=PACS_AE)
    assert busy.is_established
    try:  # the PACS is at its limit: rejected transient, local limit exceeded
        with pytest.raises(DeliveryError, match="Rejected Transient") as caught:
            send(pacs.destination(), [make_item(tmp_path, 1)], settings)
    finally:
        busy.release()
    assert not isinstance(caught.value, PermanentDeliveryError)
    wait_for(lambda: not pacs.ae.active_associations, 10, "the PACS to have a free association")
    assert send(pacs.destination(), [make_item(tmp_path, 2)], settings)[0].status == 0


def test_single_file_c_store_keeps_working(
    tmp_path: Path, pacs_factory: Callable[..., FakePacs]
) -> None:
    pacs = pacs_factory(statuses=[dimse.SUCCESS, 0xC000])
    peer = Peer(PACS_AE, "127.0.0.1", pacs.port)
    assert c_store(make_item(tmp_path, 1).path, peer, "DEMO") == dimse.SUCCESS
    with pytest.raises(DeliveryError) as caught:
        c_store(make_item(tmp_path, 2).path, peer, "DEMO")
    assert caught.value.status == 0xC000


class FakeCommitmentScp:
    """Storage Commitment Push Model SCP behaviour: N-ACTION, then N-EVENT-REPORT on the same
    association once the N-ACTION response has left (PS3.4 J.3.3)."""

    def __init__(self, failed_index: int | None, answer: bool = True) -> None:
        self.failed_index = failed_index
        self.answer = answer
        self.pending: dict[Any, Dataset] = {}
        self.armed: set[Any] = set()
        self.lock = threading.Lock()

    @property
    def handlers(self) -> list[Any]:
        return [(evt.EVT_DIMSE_SENT, self._on_dimse_sent), (evt.EVT_PDU_SENT, self._on_pdu_sent)]

    def on_action(self, event: Any) -> tuple[int, Dataset | None]:
        info = event.action_information
        assert event.action_type == 1
        assert event.request.RequestedSOPInstanceUID == STORAGE_COMMITMENT_INSTANCE
        report = Dataset()
        report.TransactionUID = info.TransactionUID
        refs = list(info.ReferencedSOPSequence)
        failed = [refs.pop(self.failed_index)] if self.failed_index is not None else []
        for ref in failed:
            ref.FailureReason = 0x0112
        report.ReferencedSOPSequence = refs
        if failed:
            report.FailedSOPSequence = failed
        if self.answer:
            with self.lock:
                self.pending[event.assoc] = report
        return dimse.SUCCESS, None

    def _on_dimse_sent(self, event: Any) -> None:
        if type(event.message).__name__ == "N_ACTION_RSP":
            with self.lock:
                if event.assoc in self.pending:
                    self.armed.add(event.assoc)

    def _on_pdu_sent(self, event: Any) -> None:
        if type(event.pdu).__name__ != "P_DATA_TF":
            return
        with self.lock:
            if event.assoc not in self.armed:
                return
            self.armed.discard(event.assoc)
            report = self.pending.pop(event.assoc)
        event_type = 2 if "FailedSOPSequence" in report else 1
        threading.Thread(
            target=event.assoc.send_n_event_report,
            args=(report, event_type, StorageCommitmentPushModel, STORAGE_COMMITMENT_INSTANCE),
            daemon=True,
        ).start()


def test_storage_commitment_committed_and_failed(
    tmp_path: Path, settings: Settings, pacs_factory: Callable[..., FakePacs]
) -> None:
    pacs = pacs_factory(commitment=FakeCommitmentScp(failed_index=1))
    items = [make_item(tmp_path, n) for n in (1, 2, 3)]
    sent = send(pacs.destination(storage_commitment=True, timeout_seconds=5), items, settings)
    assert [s.status for s in sent] == [dimse.SUCCESS, 0x0112, dimse.SUCCESS]
    assert "committed" in sent[0].detail
    assert pacs.associations == 1


def test_storage_commitment_without_report_times_out(
    tmp_path: Path, settings: Settings, pacs_factory: Callable[..., FakePacs]
) -> None:
    pacs = pacs_factory(commitment=FakeCommitmentScp(failed_index=None, answer=False))
    started = time.monotonic()
    with pytest.raises(DeliveryError, match="no storage commitment report"):
        send(
            pacs.destination(storage_commitment=True, timeout_seconds=2),
            [make_item(tmp_path, 1)],
            settings,
        )
    assert time.monotonic() - started < 10


def test_storage_commitment_not_supported_is_permanent(
    tmp_path: Path, settings: Settings, pacs_factory: Callable[..., FakePacs]
) -> None:
    pacs = pacs_factory()
    with pytest.raises(PermanentDeliveryError, match="Storage Commitment"):
        send(pacs.destination(storage_commitment=True), [make_item(tmp_path, 1)], settings)
    assert pacs.received == []


def test_outbox_copies(tmp_path: Path, settings: Settings) -> None:
    items = [make_item(tmp_path, 1), make_item(tmp_path, 2, SecondaryCaptureImageStorage)]
    default = send(Destination(name="outbox", kind="outbox"), items, settings)
    archive = send(Destination(name="archive", kind="outbox"), items[:1], settings)
    there = send(
        Destination(name="other", kind="outbox", directory=tmp_path / "x"), items, settings
    )
    again = send(Destination(name="outbox", kind="outbox"), items, settings)
    assert {s.status for s in default + archive + there + again} == {dimse.SUCCESS}
    for folder, sent in (
        (settings.data_dir / "outbox", default),
        (settings.data_dir / "outbox" / "archive", archive),
        (tmp_path / "x", there),
    ):
        for item, result in zip(items, sent, strict=False):
            copy = folder / f"{item.sop_instance_uid}.dcm"
            assert result.detail == f"outbox:{copy}"
            assert copy.read_bytes() == item.path.read_bytes()
            assert dcmread(copy).SOPInstanceUID == item.sop_instance_uid
    assert sorted(p.name for p in (settings.data_dir / "outbox").glob("*.dcm")) == sorted(
        f"{i.sop_instance_uid}.dcm" for i in items
    )


def test_no_items_no_attempt(settings: Settings) -> None:
    destination = Destination(
        name="pacs", kind="c_store", ae_title=PACS_AE, host="127.0.0.1", port=free_port()
    )
    assert send(destination, [], settings) == []
