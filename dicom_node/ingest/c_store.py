"""The C-STORE SCP handler: make the instance durable, record it, answer.

Success (0x0000) is returned only after the instance's bytes are fsynced and
renamed into the spool *and* the ledger has recorded it. Any exception becomes
a DIMSE status; nothing propagates into pynetdicom.

Statuses returned (PS3.4 Table B.2-1, PS3.7 C.4.2)
---------------------------------------------------
0x0000  Success.
0xA700  Refused: Out of Resources — disk full, spool or ledger not writable.
0xA900  Error: Data Set does not match SOP Class — (0008,0016) differs from
        the request's Affected SOP Class UID.
0xC000  Error: Cannot understand — undecodable data set, or no Study / SOP
        Instance / SOP Class UID, or SOP Instance UID differs from the request.
0x0110  Failure: Processing failure — any unexpected error (logged).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from dicom_node.core import dimse
from dicom_node.core.errors import DiskFullError, LedgerError, SpoolError
from dicom_node.core.ledger import InstanceRecord, Ledger
from dicom_node.ingest.spool import Spool

if TYPE_CHECKING:
    from pynetdicom.events import Event

log = logging.getLogger(__name__)


def _uid(value: object) -> str:
    return str(value).rstrip("\x00 ").strip() if value is not None else ""


class StoreHandler:
    """Handler for ``evt.EVT_C_STORE``.

    Parameters
    ----------
    spool : Spool
        Where instances are written.
    ledger : Ledger
        Where instances and studies are recorded.
    """

    def __init__(self, spool: Spool, ledger: Ledger) -> None:
        self.spool = spool
        self.ledger = ledger

    def __call__(self, event: Event) -> int:
        """Store one instance and return its DIMSE status (see module docstring)."""
        calling_ae = _uid(event.assoc.requestor.ae_title)
        try:
            return self._store(event, calling_ae)
        except Exception:
            log.exception("C-STORE from %s: unexpected error; answering 0x0110", calling_ae)
            return dimse.PROCESSING_FAILURE

    def _store(self, event: Event, calling_ae: str) -> int:
        request: Any = event.request  # a C_STORE primitive
        affected_uid = _uid(request.AffectedSOPInstanceUID)
        try:
            ds = event.dataset
            study_uid = _uid(ds.get("StudyInstanceUID"))
            series_uid = _uid(ds.get("SeriesInstanceUID")) or None
            sop_uid = _uid(ds.get("SOPInstanceUID"))
            sop_class = _uid(ds.get("SOPClassUID"))
        except Exception as exc:
            log.warning(
                "C-STORE from %s: SOP Instance %s cannot be decoded (%s); answering 0xC000",
                calling_ae,
                affected_uid,
                exc.__class__.__name__,
            )
            return dimse.CANNOT_UNDERSTAND
        if not (study_uid and sop_uid and sop_class):
            log.warning(
                "C-STORE from %s: SOP Instance %s lacks Study/SOP Instance/SOP Class UID; "
                "answering 0xC000",
                calling_ae,
                affected_uid,
            )
            return dimse.CANNOT_UNDERSTAND
        if sop_class != _uid(request.AffectedSOPClassUID):
            log.warning(
                "C-STORE from %s: SOP Instance %s has SOP Class %s but was sent as %s; "
                "answering 0xA900",
                calling_ae,
                sop_uid,
                sop_class,
                request.AffectedSOPClassUID,
            )
            return dimse.DATASET_DOES_NOT_MATCH_SOP_CLASS
        if sop_uid != affected_uid:
            log.warning(
                "C-STORE from %s: SOP Instance UID %s differs from Affected SOP Instance UID %s; "
                "answering 0xC000",
                calling_ae,
                sop_uid,
                affected_uid,
            )
            return dimse.CANNOT_UNDERSTAND

        try:
            path = self.spool.store(study_uid, sop_uid, event.encoded_dataset(include_meta=True))
        except DiskFullError:
            log.error(
                "C-STORE from %s: spool full storing %s; answering 0xA700", calling_ae, sop_uid
            )
            return dimse.OUT_OF_RESOURCES
        except SpoolError as exc:
            log.error("C-STORE from %s: %s; answering 0xA700", calling_ae, exc)
            return dimse.OUT_OF_RESOURCES

        record = InstanceRecord(
            study_uid=study_uid,
            series_uid=series_uid,
            sop_instance_uid=sop_uid,
            sop_class_uid=sop_class,
            transfer_syntax_uid=str(event.context.transfer_syntax),
            path=str(path),
            calling_ae=calling_ae or None,
        )
        try:
            new = self.ledger.record_instance(record)
        except LedgerError as exc:
            log.error("C-STORE from %s: %s for %s; answering 0xA700", calling_ae, exc, sop_uid)
            return dimse.OUT_OF_RESOURCES
        log.info(
            "stored SOP Instance %s of study %s from %s%s",
            sop_uid,
            study_uid,
            calling_ae,
            "" if new else " (re-sent, replaced)",
        )
        return dimse.SUCCESS
