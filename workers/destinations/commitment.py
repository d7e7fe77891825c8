"""Storage Commitment Push Model SCU on the storing association (PS3.4 Annex J.3).

After the C-STOREs, the node asks the SCP to commit the items it stored
(N-ACTION, Action Type ID 1, Request Storage Commitment; PS3.4 J.3.2) and
waits on the same association for the N-EVENT-REPORT with the result
(PS3.4 J.3.3; Event Type ID 1: all committed, 2: failures exist). An item
counts as delivered only once committed.

Limits
------
Only the report on the same association is awaited. An SCP that sends it on
a new association later (allowed by PS3.4 J.3.3) never confirms within the
timeout: every attempt then ends in :class:`DeliveryError`. Set
``storage_commitment`` false for such a PACS.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from pydicom import Dataset
from pydicom.uid import generate_uid
from pynetdicom.association import Association

from dicom_node.core import dimse
from dicom_node.core.errors import DeliveryError
from dicom_node.core.settings import Peer
from workers.destinations.base import Outbound, Sent

log = logging.getLogger(__name__)

STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
"""Storage Commitment Push Model SOP Class (PS3.4 J.3; PS3.6 Annex A)."""
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
"""Its well-known SOP Instance (PS3.4 J.3.5)."""
REQUEST_STORAGE_COMMITMENT = 1
"""N-ACTION Action Type ID (PS3.4 Table J.3-1)."""


class CommitmentReports:
    """Collects N-EVENT-REPORTs of the Storage Commitment Push Model by Transaction UID.

    Bound to ``evt.EVT_N_EVENT_REPORT`` on the requesting association; the
    association's thread delivers, the sender waits in :meth:`wait`.
    """

    def __init__(self) -> None:
        self._reports: dict[str, Dataset] = {}
        self._changed = threading.Condition()

    def on_event_report(self, event: Any) -> tuple[int, Dataset | None]:
        """Keep the report and answer Success (a pynetdicom handler; PS3.4 J.3.3.1)."""
        info = event.event_information
        uid = str(info.get("TransactionUID", ""))
        with self._changed:
            self._reports[uid] = info
            self._changed.notify_all()
        return dimse.SUCCESS, None

    def wait(self, transaction_uid: str, timeout: float) -> Dataset | None:
        """The report for ``transaction_uid``, or None if none came within ``timeout`` seconds."""
        with self._changed:
            self._changed.wait_for(lambda: transaction_uid in self._reports, timeout=timeout)
            return self._reports.get(transaction_uid)


def request_commitment(
    assoc: Association,
    peer: Peer,
    items: Sequence[Outbound],
    results: list[Sent],
    reports: CommitmentReports,
    timeout: float,
) -> list[Sent]:
    """Ask for commitment of the stored items and apply the report.

    Parameters
    ----------
    assoc : pynetdicom.association.Association
        The established association the items were stored on, with
        ``reports.on_event_report`` bound to ``EVT_N_EVENT_REPORT``.
    peer : Peer
        The SCP, for messages.
    items : sequence of Outbound
        The items sent.
    results : list of Sent
        Their C-STORE answers; only those with Success or Warning are committed.
    reports : CommitmentReports
        Where the association puts N-EVENT-REPORTs.
    timeout : float
        Seconds to wait for the report.

    Returns
    -------
    list of Sent
        ``results`` where committed items keep their status, items in the
        Failed SOP Sequence (0008,1198) get their Failure Reason (0008,1197)
        (0x0110 processing failure, 0x0112 no such object instance, 0x0213
        resource limitation, 0x0122 SOP class not supported, 0x0119
        class/instance conflict; PS3.4 J.3.3.1.1), and stored items the report
        does not mention get 0x0110.

    Raises
    ------
    DeliveryError
        If the N-ACTION is not answered with Success, or no report arrives in time.
    """
    stored = [
        (n, item)
        for n, (item, sent) in enumerate(zip(items, results, strict=True))
        if dimse.is_success_or_warning(sent.status)
    ]
    if not stored:
        return results
    request = Dataset()
    request.TransactionUID = generate_uid()
    request.ReferencedSOPSequence = [_reference(item) for _, item in stored]
    status, _ = assoc.send_n_action(
        request,
        REQUEST_STORAGE_COMMITMENT,
        STORAGE_COMMITMENT_PUSH_MODEL,
        STORAGE_COMMITMENT_INSTANCE,
    )
    if status is None or "Status" not in status:
        raise DeliveryError(f"no N-ACTION response from {peer} (storage commitment)")
    code = int(status.Status)
    if code != dimse.SUCCESS:
        raise DeliveryError(
            f"{peer} answered the storage commitment request with {dimse.status_text(code)}",
            status=code,
        )
    report = reports.wait(request.TransactionUID, timeout)
    if report is None:
        raise DeliveryError(
            f"no storage commitment report from {peer} within {timeout:g} s "
            f"(transaction {request.TransactionUID})"
        )
    committed = {
        str(ref.ReferencedSOPInstanceUID) for ref in report.get("ReferencedSOPSequence", [])
    }
    failed = {
        str(ref.ReferencedSOPInstanceUID): int(ref.get("FailureReason", dimse.PROCESSING_FAILURE))
        for ref in report.get("FailedSOPSequence", [])
    }
    out = list(results)
    for n, item in stored:
        uid = item.sop_instance_uid
        if uid in failed:
            reason = failed[uid]
            out[n] = Sent(
                item.delivery_id,
                reason,
                f"{peer}: stored, commitment failed: {dimse.status_text(reason)}",
            )
        elif uid in committed:
            out[n] = Sent(item.delivery_id, results[n].status, f"{results[n].detail}, committed")
        else:
            out[n] = Sent(
                item.delivery_id,
                dimse.PROCESSING_FAILURE,
                f"{peer}: stored, not in the commitment report",
            )
    log.info(
        "storage commitment %s at %s: %d committed, %d failed",
        request.TransactionUID,
        peer,
        len(committed),
        len(failed),
    )
    return out


def _reference(item: Outbound) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = item.sop_class_uid
    ref.ReferencedSOPInstanceUID = item.sop_instance_uid
    return ref
