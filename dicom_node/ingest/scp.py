"""The SCP: an AE that answers C-ECHO and C-STORE, plus the study-completion monitor.

What it accepts is decided in :mod:`~dicom_node.ingest.contexts` (storage SOP
Classes, retired ones included; only transfer syntaxes the node can decode,
the sender's preference honoured). Who may associate is decided in
:mod:`~dicom_node.ingest.access` (calling/called AE titles, peer hosts), and
how connections are served (socket timeouts, bounded PDUs, TLS, TCP_NODELAY,
SO_REUSEPORT) in :mod:`~dicom_node.ingest.server`.

Several SCP processes may share one port (``DICOM_NODE_SCP_PROCESSES``); one
of them is the *primary*: it reconciles the spool with the ledger at start,
and runs the completion monitor and the stall sweeper.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import TYPE_CHECKING, Any

from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.core.ledger import Ledger
from dicom_node.core.settings import Settings
from dicom_node.ingest.access import access_handlers
from dicom_node.ingest.backpressure import Backpressure
from dicom_node.ingest.c_echo import handle_echo
from dicom_node.ingest.c_store import StoreHandler, discard_partial_datasets
from dicom_node.ingest.completion import CompletionMonitor
from dicom_node.ingest.contexts import add_storage_contexts, negotiation_handlers
from dicom_node.ingest.header import quiet_pydicom_reading
from dicom_node.ingest.publisher import Publish, celery_publisher
from dicom_node.ingest.reconcile import reconcile_spool
from dicom_node.ingest.recovery import StallSweeper
from dicom_node.ingest.server import make_server
from dicom_node.ingest.spool import Spool

if TYPE_CHECKING:
    from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger(__name__)


def build_ae(settings: Settings) -> AE:
    """Create the acceptor AE: AE title, limits, timeouts and presentation contexts.

    The calling AE allowlist is checked by :func:`~dicom_node.ingest.access.access_handlers`
    (it knows peer hosts); the called AE title by pynetdicom (``require_called_aet``).
    """
    ae = AE(ae_title=settings.ae_title)
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    ae.maximum_associations = settings.max_associations
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.require_called_aet = settings.require_called_ae
    ae.add_supported_context(Verification)
    add_storage_contexts(ae)
    return ae


class StoreSCP:
    """The listening node: AE, C-STORE handler, and (primary) monitor and sweeper.

    Parameters
    ----------
    settings : Settings
        Node settings.
    publish : Publish, optional
        Task publisher; defaults to :func:`~dicom_node.ingest.publisher.celery_publisher`.
        With a publisher given (tests), no stall sweeper runs.
    primary : bool, optional
        Reconcile the spool at start and run the monitor and sweeper (default).
        Extra processes sharing the port pass False.
    """

    def __init__(
        self, settings: Settings, publish: Publish | None = None, *, primary: bool = True
    ) -> None:
        self.settings = settings
        self.primary = primary
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(settings.resolved_ledger_url, durable_commits=False)
        self.spool = Spool(settings.data_dir / "spool")
        self.backpressure = Backpressure(settings, self.spool, self.ledger)
        self.ae = build_ae(settings)
        self.monitor: CompletionMonitor | None = None
        self.sweeper: StallSweeper | None = None
        if primary:
            self.monitor = CompletionMonitor(
                self.ledger, publish or celery_publisher(settings), settings.study_quiet_seconds
            )
            if publish is None:
                self.sweeper = StallSweeper(self.ledger, settings)
        self._server: ThreadedAssociationServer | None = None
        self._saved: tuple[bool, str | None, int] | None = None

    @property
    def port(self) -> int:
        """The bound TCP port (useful when configured as 0)."""
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Reconcile (primary), bind the port and serve associations in background threads."""
        if self.primary:
            reconcile_spool(self.spool, self.ledger)
        # pynetdicom writes each received data set straight to a file in the
        # spool's incoming directory (same file system: the C-STORE handler
        # renames it into place after one fsync).
        self._saved = (
            _config.STORE_RECV_CHUNKED_DATASET,
            tempfile.tempdir,
            quiet_pydicom_reading(),
        )
        _config.STORE_RECV_CHUNKED_DATASET = True
        tempfile.tempdir = str(self.spool.incoming_dir(os.getpid()))
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, StoreHandler(self.spool, self.ledger, self.backpressure)),
            (evt.EVT_CONN_CLOSE, discard_partial_datasets),
            *access_handlers(self.settings),
            *negotiation_handlers(),
        ]
        self._server = make_server(self.ae, self.settings, handlers)
        if self.monitor is not None:
            self.monitor.start()
        if self.sweeper is not None:
            self.sweeper.start()
        log.info(
            "SCP %s listening on %s:%d%s (quiet period %.1f s, pid %d%s)",
            self.settings.ae_title,
            self.settings.host,
            self.port,
            " with TLS" if self.settings.tls else "",
            self.settings.study_quiet_seconds,
            os.getpid(),
            ", primary" if self.primary else "",
        )

    def stop(self) -> None:
        """Stop accepting associations, then stop the monitor and sweeper."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.monitor is not None:
            self.monitor.stop()
        if self.sweeper is not None:
            self.sweeper.stop()
        if self._saved is not None:  # process-wide: give them back (tests run several SCPs)
            _config.STORE_RECV_CHUNKED_DATASET, tempfile.tempdir, reading = self._saved
            quiet_pydicom_reading(reading)
            self._saved = None
        self.ledger.dispose()
        log.info("SCP stopped")
