"""Destination: an outbox folder (no PACS configured, or an archive another tool picks up)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from dicom_node.core import dimse
from dicom_node.core.destinations import OUTBOX, Destination
from dicom_node.core.durable import safe_component, write_durably
from dicom_node.core.errors import DeliveryError, DiskFullError, SpoolError
from dicom_node.core.settings import Settings
from workers.destinations.base import Outbound, Sent

log = logging.getLogger(__name__)


def outbox_dir(destination: Destination, settings: Settings) -> Path:
    """The folder of an ``outbox`` destination.

    Returns
    -------
    Path
        ``destination.directory``; else ``<data_dir>/outbox`` for the destination
        named ``outbox`` and ``<data_dir>/outbox/<name>`` for any other.
    """
    if destination.directory is not None:
        return destination.directory
    base = settings.data_dir / OUTBOX
    return base if destination.name == OUTBOX else base / destination.name


def to_outbox(
    destination: Destination, items: Sequence[Outbound], settings: Settings
) -> list[Sent]:
    """Copy each item durably into the destination's folder as ``<SOP Instance UID>.dcm``.

    A retried copy replaces the earlier one with the same bytes (same UID).

    Parameters
    ----------
    destination : Destination
        Kind ``outbox``.
    items : sequence of Outbound
        The files.
    settings : Settings
        ``data_dir`` for the default folder.

    Returns
    -------
    list of Sent
        Status 0x0000 for each, the copy's path as ``detail``.

    Raises
    ------
    DeliveryError
        If a copy cannot be written (``status`` 0xA700 when the disk is full);
        retried. Copies made before it stay (they are replaced on the retry).
    OSError
        If a report file cannot be read.
    """
    folder = outbox_dir(destination, settings)
    sent: list[Sent] = []
    for item in items:
        target = folder / f"{safe_component(item.sop_instance_uid)}.dcm"
        try:
            write_durably(target, item.path.read_bytes())
        except DiskFullError as exc:
            raise DeliveryError(
                f"outbox {destination.name}: disk full", status=dimse.OUT_OF_RESOURCES
            ) from exc
        except SpoolError as exc:
            raise DeliveryError(f"outbox {destination.name}: {exc}") from exc
        log.info("wrote %s to outbox %s", item.sop_instance_uid, destination.name)
        sent.append(Sent(item.delivery_id, dimse.SUCCESS, f"outbox:{target}"))
    return sent
