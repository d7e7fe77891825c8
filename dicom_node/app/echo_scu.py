"""C-ECHO SCU: check that a peer answers (PS3.7 9.1.5)."""

from __future__ import annotations

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.core.errors import DeliveryError
from dicom_node.core.settings import Peer


def echo(peer: Peer, calling_ae: str, timeout: float = 10.0) -> int:
    """Send C-ECHO to ``peer``.

    Returns
    -------
    int
        The DIMSE status (0x0000 on success).

    Raises
    ------
    DeliveryError
        If no association could be established or no response came.
    """
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if not assoc.is_established:
        raise DeliveryError(f"no association with {peer}")
    try:
        response = assoc.send_c_echo()
    finally:
        assoc.release()
    if not response or "Status" not in response:
        raise DeliveryError(f"no C-ECHO response from {peer}")
    return int(response.Status)
