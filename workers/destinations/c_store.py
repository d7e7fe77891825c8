"""Destination: a C-STORE SCP (the PACS). One attempt; the deliver task retries."""

from __future__ import annotations

import logging
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from dicom_node.core import dimse
from dicom_node.core.errors import DeliveryError
from dicom_node.core.settings import Peer

log = logging.getLogger(__name__)


def c_store(
    path: Path,
    peer: Peer,
    calling_ae: str,
    acse_timeout: float = 30.0,
    dimse_timeout: float = 60.0,
    network_timeout: float = 60.0,
) -> int:
    """Send one Part 10 file to a peer with C-STORE.

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
        If the association is rejected or aborted, or the status is a failure.
    """
    ds = dcmread(path)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = (
        acse_timeout,
        dimse_timeout,
        network_timeout,
    )
    ae.add_requested_context(ds.SOPClassUID, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if not assoc.is_established:
        raise DeliveryError(f"association with {peer} not established")
    try:
        response = assoc.send_c_store(ds)
    except (ValueError, RuntimeError) as exc:  # e.g. the PACS accepted no context for SR
        raise DeliveryError(f"{peer} cannot take {ds.SOPClassUID}: {exc}") from exc
    finally:
        assoc.release()
    if response is None or "Status" not in response:
        raise DeliveryError(f"no C-STORE response from {peer}")
    code = int(response.Status)
    if not dimse.is_success_or_warning(code):
        raise DeliveryError(f"{peer} answered C-STORE with 0x{code:04X}")
    log.info("delivered SR %s to %s (status 0x%04X)", ds.SOPInstanceUID, peer, code)
    return code
