"""The C-STORE SCP handler: check, make durable, record, answer.

pynetdicom has already written the data set, as received, to a file in the
spool's incoming directory (``STORE_RECV_CHUNKED_DATASET``). The handler reads
only the identifying attributes (:mod:`~dicom_node.ingest.header`), then
fsyncs the file and renames it into the spool, and records it in the ledger.
Success (0x0000) is returned only after the rename is durable. Any exception
becomes a DIMSE status; nothing propagates into pynetdicom.

The loop guard: an object this node produced (listed among our reports, or
carrying our Manufacturer) and any non-image object (SR, KOS, PR, SEG …) is
stored and recorded, but never starts an analysis and never reopens a study.
An instance re-sent with the same bytes is acknowledged and not stored again; one
re-sent with other bytes (a PACS that changed its pixels) replaces the stored file
and reopens its study as a new generation, whose reports supersede the old ones.

Statuses returned (PS3.4 Table B.2-1, PS3.7 C.4.2)
---------------------------------------------------
0x0000  Success.
0xA700  Refused: Out of Resources — disk below its threshold or full, spool
        over quota, too many studies waiting for the workers, ledger not
        writable.
0xA900  Error: Data Set does not match SOP Class — (0008,0016) differs from
        the request's Affected SOP Class UID.
0xC000  Error: Cannot understand — undecodable or truncated data set, a
        missing or malformed Study / SOP Instance / SOP Class UID, or a SOP
        Instance UID that differs from the request's.
0x0110  Failure: Processing failure — any unexpected error (logged).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicom_node.core import dimse
from dicom_node.core.errors import (
    DiskFullError,
    InvalidInstanceError,
    LedgerError,
    SpoolError,
)
from dicom_node.core.ledger import InstanceRecord, InstanceRole, Ledger
from dicom_node.ingest.backpressure import Backpressure
from dicom_node.ingest.header import is_valid_uid, read_header
from dicom_node.ingest.spool import Spool

if TYPE_CHECKING:
    from pynetdicom.events import Event

log = logging.getLogger(__name__)


def _text(value: object) -> str:
    return str(value).rstrip("\x00 ").strip() if value is not None else ""


def _uid_for_log(value: str) -> str:
    """A UID as logged: itself when valid, else a marker (a malformed UID may hold anything)."""
    return value if is_valid_uid(value) else "<malformed UID>"


class StoreHandler:
    """Handler for ``evt.EVT_C_STORE``.

    Parameters
    ----------
    spool : Spool
        Where instances are written.
    ledger : Ledger
        Where instances and studies are recorded.
    backpressure : Backpressure
        Says when to answer 0xA700 before storing.
    """

    def __init__(self, spool: Spool, ledger: Ledger, backpressure: Backpressure) -> None:
        self.spool = spool
        self.ledger = ledger
        self.backpressure = backpressure

    def __call__(self, event: Event) -> int:
        """Store one instance and return its DIMSE status (see module docstring)."""
        calling_ae = _text(event.assoc.requestor.ae_title)
        try:
            return self._store(event, calling_ae)
        except Exception as exc:
            log.error(
                "C-STORE from %s: unexpected %s; answering 0x0110",
                calling_ae,
                exc.__class__.__name__,
            )
            return dimse.PROCESSING_FAILURE

    def _store(self, event: Event, calling_ae: str) -> int:
        request: Any = event.request  # a C_STORE primitive
        affected_uid = _text(request.AffectedSOPInstanceUID)
        received: Path = event.dataset_path
        try:
            header = read_header(received)
        except InvalidInstanceError as exc:
            log.warning(
                "C-STORE from %s: SOP Instance %s rejected: %s; answering 0xC000",
                calling_ae,
                _uid_for_log(affected_uid),
                exc,
            )
            return dimse.CANNOT_UNDERSTAND
        sop_uid = header.sop_instance_uid
        if header.sop_class_uid != _text(request.AffectedSOPClassUID):
            log.warning(
                "C-STORE from %s: SOP Instance %s has SOP Class %s but was sent as %s; "
                "answering 0xA900",
                calling_ae,
                sop_uid,
                header.sop_class_uid,
                _uid_for_log(_text(request.AffectedSOPClassUID)),
            )
            return dimse.DATASET_DOES_NOT_MATCH_SOP_CLASS
        if sop_uid != affected_uid:
            log.warning(
                "C-STORE from %s: SOP Instance UID %s differs from Affected SOP Instance UID %s; "
                "answering 0xC000",
                calling_ae,
                sop_uid,
                _uid_for_log(affected_uid),
            )
            return dimse.CANNOT_UNDERSTAND

        refusal = self.backpressure.refusal(header.study_uid, received.stat().st_size)
        if refusal:
            log.warning(
                "C-STORE from %s: SOP Instance %s refused: %s; answering 0xA700",
                calling_ae,
                sop_uid,
                refusal,
            )
            return dimse.OUT_OF_RESOURCES

        try:
            same = self.spool.same_as_stored(received, header.study_uid, sop_uid)
            known = self.ledger.instance_exists(sop_uid)
            if same and known:
                log.info(
                    "SOP Instance %s of study %s from %s re-sent unchanged; already stored",
                    sop_uid,
                    header.study_uid,
                    calling_ae,
                )
                return dimse.SUCCESS
            # Images are never our reports; other objects are looked up (loop guard).
            produced = not header.is_image and self.ledger.produced_here(sop_uid)
            role = header.role(produced)
            size = received.stat().st_size
            path = self.spool.commit(received, header.study_uid, sop_uid)
            self.backpressure.stored(size)
            self.ledger.record_instance(
                InstanceRecord(
                    study_uid=header.study_uid,
                    series_uid=header.series_uid,
                    sop_instance_uid=sop_uid,
                    sop_class_uid=header.sop_class_uid,
                    transfer_syntax_uid=str(event.context.transfer_syntax),
                    path=str(path),
                    calling_ae=calling_ae or None,
                    role=role,
                    changed=known,
                )
            )
        except DiskFullError:
            log.error(
                "C-STORE from %s: spool full storing %s; answering 0xA700", calling_ae, sop_uid
            )
            return dimse.OUT_OF_RESOURCES
        except (SpoolError, LedgerError) as exc:
            log.error(
                "C-STORE from %s: %s storing %s; answering 0xA700",
                calling_ae,
                exc.__class__.__name__,
                sop_uid,
            )
            return dimse.OUT_OF_RESOURCES
        log.info(
            "stored SOP Instance %s of study %s from %s%s%s",
            sop_uid,
            header.study_uid,
            calling_ae,
            "" if role == InstanceRole.IMAGE else f" ({role.value}: never analysed)",
            " (re-sent with other bytes: replaced, study re-analysed)" if known else "",
        )
        return dimse.SUCCESS


def discard_partial_datasets(event: Event) -> None:
    """``evt.EVT_CONN_CLOSE`` handler: delete data sets whose C-STORE never reached the handler.

    pynetdicom creates the file when a C-STORE command arrives and deletes it
    after the handler ran. An association that is aborted or closed mid-data
    set (or whose last message was received but never served) leaves the file
    in ``.incoming``; nothing was acknowledged for it, so it is removed here.
    """
    try:
        provider: Any = event.assoc.dimse
        pairs: list[tuple[Any, Any]] = [
            (
                getattr(provider.message, "_data_set_file", None),
                getattr(provider.message, "_data_set_path", None),
            )
        ]
        for _, primitive in list(provider.msg_queue.queue):
            handle = getattr(primitive, "_dataset_file", None)
            pairs.append((handle, getattr(handle, "name", None)))
        for handle, path in pairs:
            if handle is not None:
                handle.close()
            if path:
                Path(path).unlink(missing_ok=True)
    except Exception as exc:  # a close handler must never raise into pynetdicom
        log.warning("cannot discard a partial data set (%s)", exc.__class__.__name__)
