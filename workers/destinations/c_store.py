"""Destination: a C-STORE SCP (the PACS), all items of an attempt over one association.

One attempt; the ``deliver`` task retries (PS3.4 Annex B Storage Service
Class; PS3.7 9.1.1 C-STORE; PS3.8 7.1 association establishment).

Outcomes
--------
- Every item gets the Status (0000,0900) of its C-STORE response, in order.
- A SOP class the SCP accepted no presentation context for: status 0x0122
  (Refused: SOP Class not supported; PS3.7 C.4.2), a dead letter. Also when
  the SCP accepted the association but none of our contexts.
- Nothing listening, the TCP connect or the association negotiation timing
  out (``acse`` timeout), the association aborted, a DIMSE timeout or a
  response without Status mid-batch: :class:`DeliveryError` (retried).
- Association rejected *transient* (PS3.8 7.1.1.9), or rejected by the
  presentation layer (congestion, local limit): :class:`DeliveryError`.
- Association rejected *permanent* by the service user or the ACSE provider
  (called or calling AE title not recognised, application context not
  supported, no reason): :class:`PermanentDeliveryError`. The peer said that
  this will not change by itself: it is a configuration error (our AE title
  is not known to the PACS, the destination names the wrong called AE). It
  goes to the dead letter at once, where the operator sees it, fixes the
  configuration and replays it with ``dicom-node exports retry``, instead of
  retrying silently for hours.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association

from dicom_node.core import dimse
from dicom_node.core.destinations import Destination
from dicom_node.core.errors import DeliveryError, PermanentDeliveryError
from dicom_node.core.settings import Peer, Settings
from workers.destinations.base import Outbound, Sent, Timeouts
from workers.destinations.commitment import (
    STORAGE_COMMITMENT_PUSH_MODEL,
    CommitmentReports,
    request_commitment,
)

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128
"""At most 128 presentation contexts per association (PS3.8 9.3.2.2: odd IDs 1-255)."""

_REJECTED_PERMANENT = 0x01
_SOURCE_PRESENTATION = 0x03


def store(destination: Destination, items: Sequence[Outbound], settings: Settings) -> list[Sent]:
    """Send ``items`` to a ``c_store`` destination over one association.

    Parameters
    ----------
    destination : Destination
        Kind ``c_store``: its peer, ``storage_commitment`` and ``timeout_seconds``.
    items : sequence of Outbound
        The Part 10 files, sent in this order.
    settings : Settings
        Our AE title (the calling AE) and the default timeouts.

    Returns
    -------
    list of Sent
        One per item, in order, with its C-STORE status (or the storage
        commitment failure reason, see :mod:`.commitment`).

    Raises
    ------
    DeliveryError
        The peer could not be reached or answered nothing usable (see the module notes).
    PermanentDeliveryError
        The association was rejected permanently, or storage commitment is
        configured but the SCP does not accept its SOP class.
    OSError, pydicom.errors.InvalidDicomError
        If a report file cannot be read.
    """
    return store_to_peer(
        destination.peer,
        settings.ae_title,
        items,
        Timeouts.of(destination, settings),
        commitment=destination.storage_commitment,
    )


def store_to_peer(
    peer: Peer,
    calling_ae: str,
    items: Sequence[Outbound],
    timeouts: Timeouts,
    *,
    commitment: bool = False,
) -> list[Sent]:
    """Send ``items`` to ``peer`` over one association; see :func:`store`.

    Each distinct SOP class is proposed with Explicit and Implicit VR Little
    Endian (the files are Explicit VR Little Endian; pynetdicom re-encodes
    them when only Implicit is accepted). With ``commitment``, the Storage
    Commitment Push Model SOP class is proposed too, and the stored items are
    committed on the same association (:func:`.commitment.request_commitment`).

    Parameters
    ----------
    peer : Peer
        The SCP.
    calling_ae : str
        Our AE title.
    items : sequence of Outbound
        The files.
    timeouts : Timeouts
        ``acse`` (TCP connect and negotiation), ``dimse`` (each response and
        the commitment report), ``network`` (peer silence), seconds.
    commitment : bool
        Ask for storage commitment (PS3.4 J.3).

    Returns
    -------
    list of Sent
        One per item, in order.
    """
    if not items:
        return []
    datasets = [dcmread(item.path) for item in items]
    sop_classes = list(dict.fromkeys(item.sop_class_uid for item in items))
    if len(sop_classes) + int(commitment) > MAX_CONTEXTS:
        raise PermanentDeliveryError(
            f"{len(sop_classes)} SOP classes in one attempt: more than {MAX_CONTEXTS} contexts"
        )
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeouts.acse
    ae.connection_timeout = timeouts.acse
    ae.dimse_timeout = timeouts.dimse
    ae.network_timeout = timeouts.network
    for sop_class in sop_classes:
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    if commitment:
        ae.add_requested_context(
            STORAGE_COMMITMENT_PUSH_MODEL, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        )
    answers: list[Any] = []  # A-ASSOCIATE-AC/RJ primitives received
    reports = CommitmentReports()
    handlers: list[Any] = [(evt.EVT_ACSE_RECV, lambda event: answers.append(event.primitive))]
    if commitment:
        handlers.append((evt.EVT_N_EVENT_REPORT, reports.on_event_report))
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, evt_handlers=handlers)
    if not assoc.is_established:
        return _not_established(assoc, peer, items, answers)
    try:
        if commitment and not _accepts(assoc, STORAGE_COMMITMENT_PUSH_MODEL):
            raise PermanentDeliveryError(
                f"{peer} does not accept Storage Commitment Push Model; "
                "set storage_commitment false for this destination"
            )
        results = [
            _store_one(assoc, peer, item, ds, done=n)
            for n, (item, ds) in enumerate(zip(items, datasets, strict=True))
        ]
        if commitment:
            results = request_commitment(assoc, peer, items, results, reports, timeouts.dimse)
    except BaseException:
        assoc.abort()
        raise
    assoc.release()
    return results


def c_store(
    path: Path,
    peer: Peer,
    calling_ae: str,
    acse_timeout: float = 30.0,
    dimse_timeout: float = 60.0,
    network_timeout: float = 60.0,
) -> int:
    """Send one Part 10 file to a peer with C-STORE (the demo's modality; tools).

    Parameters
    ----------
    path : Path
        The file; its SOP Class is proposed with Explicit and Implicit VR Little Endian.
    peer : Peer
        Destination AE.
    calling_ae : str
        Our AE title.
    acse_timeout, dimse_timeout, network_timeout : float
        Seconds.

    Returns
    -------
    int
        The DIMSE status, Success or a Warning.

    Raises
    ------
    DeliveryError
        If the peer cannot be reached, the association is rejected or aborted,
        or the status is a failure (``status`` set).
    """
    ds = dcmread(path, stop_before_pixels=True)
    item = Outbound(0, path, str(ds.SOPClassUID), str(ds.SOPInstanceUID))
    timeouts = Timeouts(acse_timeout, dimse_timeout, network_timeout)
    (sent,) = store_to_peer(peer, calling_ae, [item], timeouts)
    if not dimse.is_success_or_warning(sent.status):
        raise DeliveryError(
            f"{peer} answered C-STORE with {dimse.status_text(sent.status)}", status=sent.status
        )
    return sent.status


def _accepts(assoc: Association, sop_class: str) -> bool:
    return any(cx.abstract_syntax == sop_class and cx.as_scu for cx in assoc.accepted_contexts)


def _not_established(
    assoc: Association, peer: Peer, items: Sequence[Outbound], answers: list[Any]
) -> list[Sent]:
    """Explain an association that did not come up: statuses, or raise."""
    answer: Any = answers[-1] if answers else None
    result = getattr(answer, "result", None)
    if assoc.is_rejected and answer is not None and result in (0x01, 0x02):
        what = (
            f"association rejected by {peer}: {answer.result_str}, "
            f"source {answer.source_str}, reason {answer.reason_str}"
        )
        if result == _REJECTED_PERMANENT and answer.result_source != _SOURCE_PRESENTATION:
            raise PermanentDeliveryError(what)
        raise DeliveryError(what)
    if result == 0x00 and not assoc.accepted_contexts:
        # Accepted, but not one of our contexts: pynetdicom aborted it.
        log.warning("%s accepted no presentation context for %d item(s)", peer, len(items))
        return [_unsupported(peer, item) for item in items]
    if assoc.is_aborted and answer is None:
        raise DeliveryError(
            f"association with {peer} not established: connection refused, reset or "
            "aborted before any answer"
        )
    if assoc.is_aborted:
        raise DeliveryError(f"association with {peer} aborted during negotiation")
    raise DeliveryError(
        f"association with {peer} not established: unreachable or no answer in time"
    )


def _unsupported(peer: Peer, item: Outbound) -> Sent:
    status = dimse.SOP_CLASS_NOT_SUPPORTED
    return Sent(item.delivery_id, status, f"{peer}: no context for {item.sop_class_uid}")


def _store_one(assoc: Association, peer: Peer, item: Outbound, ds: Dataset, *, done: int) -> Sent:
    """C-STORE one item on the open association."""
    if not assoc.is_established:
        raise DeliveryError(f"association with {peer} lost after {done} item(s)")
    if not _accepts(assoc, item.sop_class_uid):
        log.warning("%s accepted no context for %s", peer, item.sop_class_uid)
        return _unsupported(peer, item)
    try:
        response = assoc.send_c_store(ds)
    except ValueError:
        # No context for the file's own SOP class or transfer syntax, or it cannot
        # be encoded for the accepted one: not something a retry fixes.
        log.warning("%s: cannot send %s on the accepted contexts", peer, item.sop_instance_uid)
        return Sent(
            item.delivery_id,
            dimse.PROCESSING_FAILURE,
            f"{peer}: {item.sop_instance_uid} cannot be encoded for the accepted context",
        )
    except RuntimeError as exc:
        raise DeliveryError(f"association with {peer} lost after {done} item(s)") from exc
    if "Status" not in response:
        raise DeliveryError(
            f"no C-STORE response from {peer} for item {done + 1} of an attempt "
            "(DIMSE timeout or association aborted)"
        )
    status = int(response.Status)
    log.info(
        "C-STORE %s (%s) to %s: %s",
        item.sop_instance_uid,
        item.sop_class_uid,
        peer,
        dimse.status_text(status),
    )
    return Sent(item.delivery_id, status, f"{peer}: {dimse.status_text(status)}")
