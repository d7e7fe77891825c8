"""What the destinations take and give back: :class:`Outbound` items and :class:`Sent` answers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dicom_node.core.destinations import Destination
from dicom_node.core.settings import Settings


@dataclass(frozen=True)
class Outbound:
    """One report object to send in a delivery attempt.

    Attributes
    ----------
    delivery_id : int
        The ledger's delivery this object belongs to.
    path : Path
        The Part 10 file (Explicit VR Little Endian file meta).
    sop_class_uid, sop_instance_uid : str
        Its SOP Class and SOP Instance UIDs (0008,0016), (0008,0018).
    """

    delivery_id: int
    path: Path
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class Sent:
    """The destination's answer for one :class:`Outbound`.

    Attributes
    ----------
    delivery_id : int
        The item's delivery.
    status : int
        Its DIMSE status (C-STORE response Status (0000,0900)), or the status a
        STOW-RS answer or a storage commitment report maps to; classify it with
        :func:`dicom_node.core.dimse.delivery_verdict`.
    detail : str
        Where it went or what was said, for the ledger (UIDs and AE titles only).
    """

    delivery_id: int
    status: int
    detail: str = ""


@dataclass(frozen=True)
class Timeouts:
    """Timeouts of one attempt, seconds.

    Attributes
    ----------
    acse : float
        Association negotiation (and the TCP connect).
    dimse : float
        Waiting for one DIMSE response, the STOW-RS answer, or the storage
        commitment report.
    network : float
        Silence of the peer mid-association.
    """

    acse: float
    dimse: float
    network: float

    @classmethod
    def of(cls, destination: Destination | None, settings: Settings) -> Timeouts:
        """The destination's ``timeout_seconds`` for all three, else the node's settings."""
        if destination is not None and destination.timeout_seconds is not None:
            t = float(destination.timeout_seconds)
            return cls(t, t, t)
        return cls(settings.acse_timeout, settings.dimse_timeout, settings.network_timeout)
