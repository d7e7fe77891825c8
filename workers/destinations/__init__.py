"""Ways out for reports: one module per kind of destination.

A destination is written as text in the settings and the ledger:
``AE@host:port`` for a C-STORE SCP (:mod:`.c_store`), ``outbox`` for the
outbox directory (:mod:`.outbox`). STOW-RS belongs here too.
"""

from __future__ import annotations

from pathlib import Path

from dicom_node.core.settings import Peer, Settings
from workers.destinations.c_store import c_store
from workers.destinations.outbox import to_outbox

OUTBOX = "outbox"


def send(destination: str, report: Path, settings: Settings) -> str:
    """Make one delivery attempt of ``report`` to ``destination``.

    Parameters
    ----------
    destination : str
        ``outbox`` or ``AE@host:port``.
    report : Path
        The Part 10 file.
    settings : Settings
        Our AE title and timeouts, the data directory.

    Returns
    -------
    str
        Where it went (the outbox file, or the peer).

    Raises
    ------
    DeliveryError
        If the peer refused it or could not be reached.
    ConfigError
        If ``destination`` is neither form.
    SpoolError
        If the outbox copy cannot be written.
    """
    if destination == OUTBOX:
        return f"outbox:{to_outbox(report, settings.data_dir / 'outbox')}"
    peer = Peer.parse(destination)
    c_store(
        report,
        peer,
        settings.ae_title,
        settings.acse_timeout,
        settings.dimse_timeout,
        settings.network_timeout,
    )
    return str(peer)
