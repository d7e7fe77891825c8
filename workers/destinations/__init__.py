"""Ways out for reports: one module per kind of destination.

:func:`send` makes one delivery attempt of several report objects to one
configured :class:`~dicom_node.core.destinations.Destination`: one C-STORE
association (:mod:`.c_store`, optionally with storage commitment,
:mod:`.commitment`), one STOW-RS request (:mod:`.stow_rs`) or outbox copies
(:mod:`.outbox`). Each item gets its own status; the ``deliver`` task judges it
with :func:`dicom_node.core.dimse.delivery_verdict`.
"""

from __future__ import annotations

from collections.abc import Sequence

from dicom_node.core.destinations import Destination
from dicom_node.core.errors import ConfigError
from dicom_node.core.settings import Settings
from workers.destinations.base import Outbound, Sent

__all__ = ["Outbound", "Sent", "send"]


def send(destination: Destination, items: Sequence[Outbound], settings: Settings) -> list[Sent]:
    """Make one delivery attempt of ``items`` to ``destination``.

    Parameters
    ----------
    destination : Destination
        Where to (its ``kind`` picks the module).
    items : sequence of Outbound
        The report files, in sending order.
    settings : Settings
        Our AE title, default timeouts, the data directory.

    Returns
    -------
    list of Sent
        One per item, in order, each with its DIMSE status (STOW-RS answers
        and storage commitment results mapped to statuses); empty for no items.

    Raises
    ------
    DeliveryError
        The destination could not be reached or answered nothing usable
        (connection refused, association rejected transiently or aborted,
        DIMSE/network/HTTP timeout, HTTP 5xx/408/429, no storage commitment
        report in time, an outbox copy that cannot be written): retry.
    PermanentDeliveryError
        HTTP 4xx (but 409 with per-instance failures, which become statuses),
        or an association rejected permanently: dead letter.
    ConfigError
        For an unknown kind.
    OSError, pydicom.errors.InvalidDicomError
        If a report file cannot be read.
    """
    if not items:
        return []
    if destination.kind == "c_store":
        from workers.destinations.c_store import store

        return store(destination, items, settings)
    if destination.kind == "stow_rs":
        from workers.destinations.stow_rs import stow

        return stow(destination, items, settings)
    if destination.kind == "outbox":
        from workers.destinations.outbox import to_outbox

        return to_outbox(destination, items, settings)
    raise ConfigError(f"destination {destination.name}: unknown kind {destination.kind!r}")
