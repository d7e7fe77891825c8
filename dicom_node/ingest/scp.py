"""The SCP: an AE that answers C-ECHO and C-STORE, plus the study-completion monitor.

Supported presentation contexts: Verification and every storage SOP Class in
pynetdicom's ``AllStoragePresentationContexts``, each with every transfer
syntax pynetdicom knows (``ALL_TRANSFER_SYNTAXES``), so compressed images are
accepted as sent and stored without decoding.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.core.ledger import Ledger
from dicom_node.core.settings import Settings
from dicom_node.ingest.c_echo import handle_echo
from dicom_node.ingest.c_store import StoreHandler
from dicom_node.ingest.completion import CompletionMonitor
from dicom_node.ingest.publisher import Publish, celery_publisher
from dicom_node.ingest.spool import Spool

if TYPE_CHECKING:
    from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger(__name__)


def build_ae(settings: Settings) -> AE:
    """Create the acceptor AE with our AE title, timeouts and presentation contexts."""
    ae = AE(ae_title=settings.ae_title)
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    ae.maximum_pdu_size = 0  # no limit on what we receive
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(str(context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
    return ae


class StoreSCP:
    """The listening node: AE, C-STORE handler and completion monitor.

    Parameters
    ----------
    settings : Settings
        Node settings.
    publish : Publish, optional
        Task publisher; defaults to :func:`~dicom_node.ingest.publisher.celery_publisher`.
    """

    def __init__(self, settings: Settings, publish: Publish | None = None) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(settings.resolved_ledger_url)
        self.spool = Spool(settings.data_dir / "spool")
        self.ae = build_ae(settings)
        self.monitor = CompletionMonitor(
            self.ledger, publish or celery_publisher(settings), settings.study_quiet_seconds
        )
        self._server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        """The bound TCP port (useful when configured as 0)."""
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind the port and serve associations in background threads."""
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, StoreHandler(self.spool, self.ledger)),
        ]
        self._server = self.ae.start_server(
            (self.settings.host, self.settings.port), block=False, evt_handlers=handlers
        )
        self.monitor.start()
        log.info(
            "SCP %s listening on %s:%d (quiet period %.1f s)",
            self.settings.ae_title,
            self.settings.host,
            self.port,
            self.settings.study_quiet_seconds,
        )

    def stop(self) -> None:
        """Stop accepting associations, then stop the monitor."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.monitor.stop()
        self.ledger.dispose()
        log.info("SCP stopped")
