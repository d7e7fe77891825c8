"""How connections are served: deadlines, a per-host cap, bounded PDUs, TLS off the accept loop.

pynetdicom's stock server accepts a connection and hands the socket, with no
timeout, to an association thread whose upper layer (DUL) then reads each PDU
with blocking ``recv()`` calls. A peer that sends half a PDU and stalls keeps
that thread alive for ever, and every such thread counts toward the AE's
maximum number of associations, so ten stalled peers lock every modality out
("Local Limit Exceeded"). This module serves connections with pynetdicom's
public extension points (``AE.make_server(server_class=...)``, subclasses of
:class:`~pynetdicom.transport.ThreadedAssociationServer`,
:class:`~pynetdicom.transport.RequestHandler` and
:class:`~pynetdicom.transport.AssociationSocket`):

- **Deadlines.** Until the association is established (PS3.8 section 9.3.2,
  A-ASSOCIATE-RQ/AC) every read must finish before ``acse_timeout`` seconds
  after the connection was accepted, however slowly the peer trickles bytes; a
  connection that has not completed negotiation by then is closed (the TLS
  handshake counts against the same deadline). Afterwards a peer may stay
  silent, mid-PDU included, at most ``network_timeout`` seconds per read.
  A read that times out closes the connection (DUL event 17), which ends the
  association thread.
- **Per-host cap.** At most ``max_associations_per_host`` connections from one
  IP address at once, so no single host can take all of ``max_associations``.
  One more gets no thread: the accept loop answers its A-ASSOCIATE-RQ with an
  A-ASSOCIATE-RJ (rejected-transient, service-provider presentation related,
  local-limit-exceeded; PS3.8 Table 9-21) and closes it (a TLS one is closed
  at once).
- **Bounded PDUs.** A PDU whose length field exceeds what we accept (our
  Maximum Length, PS3.8 D.1, for P-DATA-TF; :data:`MAX_NEGOTIATION_PDU` for
  association PDUs) closes the connection before anything is buffered; PDUs
  are read into one buffer that grows only as bytes actually arrive.
- **TLS** (PS3.15 Annex B) is negotiated in the connection's own thread, so a
  client that never sends its ClientHello cannot block the accept loop.
- **Sockets.** ``TCP_NODELAY`` on accepted connections; ``SO_REUSEPORT`` on the
  listening socket when several SCP processes share the port.

Only AE titles and peer addresses are logged.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import threading
import time
from collections import deque
from copy import deepcopy
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from pynetdicom import AE, evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import (
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)

from dicom_node.core.settings import Settings
from dicom_node.ingest.tls import server_ssl_context

log = logging.getLogger(__name__)

PDU_HEADER_LENGTH = 6
"""PDU type (1), reserved (1), PDU length (4): PS3.8 section 9.3.1."""
P_DATA_TF = 0x04
"""PDU type of P-DATA-TF (PS3.8 Table 9-22)."""
MAX_NEGOTIATION_PDU = 256 * 1024
"""Largest A-ASSOCIATE, A-RELEASE or A-ABORT PDU we read, bytes.

An A-ASSOCIATE-RQ with 128 presentation contexts of 20 transfer syntaxes each
is under 200 KiB."""
PDU_SLACK = 1024
"""Bytes over our Maximum Length still tolerated in a P-DATA-TF (peers that count it loosely)."""
LISTEN_BACKLOG = 128
"""Connections the kernel queues for ``accept()`` (pynetdicom's default is 5)."""
_INITIAL_BUFFER = 1024 * 1024
"""A PDU buffer starts at most this large and doubles as data arrives."""
_HOST_CAP_REJECT = bytes([0x03, 0x00, 0, 0, 0, 4, 0x00, 0x02, 0x03, 0x02])
"""A-ASSOCIATE-RJ PDU: rejected-transient (2), service-provider presentation (3),
local-limit-exceeded (2); PS3.8 section 9.3.4."""
_LINGER_SECONDS = 1.0
"""How long a connection turned away at the per-host cap is kept (waiting, then half-closed)."""
_MAX_TURNED_AWAY = 256
"""Turned-away connections kept at most; older ones are closed at once."""
_POLL_INTERVAL = 0.1
"""Seconds the accept loop waits for a connection before its housekeeping."""
_LOG_INTERVAL = 10.0
"""Seconds between two WARNING lines about one address hitting its cap."""


@dataclass
class _TurnedAway:
    """A connection refused at the per-host cap, kept until its rejection is delivered."""

    sock: socket.socket
    deadline: float
    answered: bool = False


class BoundedAssociationSocket(AssociationSocket):
    """An :class:`~pynetdicom.transport.AssociationSocket` with deadlines and bounded reads.

    Parameters
    ----------
    assoc : Association
        The acceptor association that owns the socket.
    client_socket : socket.socket
        The accepted (and, with TLS, already handshaken) connection.
    deadline : float
        :func:`time.monotonic` time by which association negotiation must be done.
    network_timeout : float
        Seconds one read may wait for data once the association is established.
    max_pdu_size : int
        Our Maximum Length (PS3.8 D.1): the largest P-DATA-TF we accept.
    """

    def __init__(
        self,
        assoc: Association,
        client_socket: socket.socket,
        *,
        deadline: float,
        network_timeout: float,
        max_pdu_size: int,
    ) -> None:
        super().__init__(assoc, client_socket=client_socket)
        self._deadline = deadline
        self._network_timeout = network_timeout
        self._max_p_data = max_pdu_size + PDU_SLACK
        self._max_other = max(MAX_NEGOTIATION_PDU, max_pdu_size) + PDU_SLACK
        self._limit = self._max_other
        self._timeout: float | None = None
        self._negotiating = True

    def _arm(self, sock: socket.socket) -> None:
        """Set the socket timeout for the next read: the ACSE deadline, then the network timeout."""
        if self._negotiating and self.assoc.is_established:
            self._negotiating = False
        if self._negotiating:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out")
            sock.settimeout(remaining)
            self._timeout = None
        elif self._timeout != self._network_timeout:
            sock.settimeout(self._network_timeout)
            self._timeout = self._network_timeout

    @property
    def ready(self) -> bool:
        """Whether the DUL should read: data is waiting, or the ACSE deadline has passed.

        A silent peer is thus dropped at the deadline too (the read raises
        :class:`TimeoutError`), not only when pynetdicom's ARTIM timer, started
        later in the association thread, expires.
        """
        if (
            self._negotiating
            and self.socket is not None
            and not self.assoc.is_established
            and time.monotonic() >= self._deadline
        ):
            return True
        return bool(super().ready)

    def _refuse(self, reason: str) -> OSError:
        """Shut the connection down (the peer sees it closed) and return the error to raise."""
        sock = self.socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        peer = self.assoc.requestor.address
        log.warning("connection from %s closed: %s", peer, reason)
        return OSError(reason)

    def recv(self, nr_bytes: int) -> bytearray:
        """Read exactly ``nr_bytes`` (fewer only if the peer closed the connection).

        The DUL reads each PDU as its 6-byte header, then its body; a body
        longer than we accept for its PDU type is refused unread.

        Raises
        ------
        OSError
            The PDU is too large (the connection is shut down first), or the
            read timed out (:class:`TimeoutError`), or the connection failed.
        """
        sock = self.socket
        if sock is None:
            raise OSError("connection already closed")
        if nr_bytes > self._limit:
            raise self._refuse(f"PDU length {nr_bytes} exceeds the {self._limit} bytes accepted")
        buffer = bytearray(min(nr_bytes, _INITIAL_BUFFER))
        received = 0
        while received < nr_bytes:
            if received == len(buffer):
                buffer.extend(bytes(min(len(buffer), nr_bytes - len(buffer))))
            try:
                self._arm(sock)
                count = sock.recv_into(memoryview(buffer)[received:])
            except TimeoutError:
                log.warning(
                    "connection from %s dropped: %s",
                    self.assoc.requestor.address,
                    "association not negotiated within the ACSE timeout"
                    if self._negotiating
                    else f"silent for {self._network_timeout:g} s (network timeout)",
                )
                raise
            if count == 0:
                del buffer[received:]
                break
            received += count
        if nr_bytes == PDU_HEADER_LENGTH and received == PDU_HEADER_LENGTH:
            # The next read is this PDU's body: bound it by the PDU type.
            self._limit = self._max_p_data if buffer[0] == P_DATA_TF else self._max_other
        else:
            self._limit = self._max_other
        return buffer


class NodeRequestHandler(RequestHandler):
    """Serves one connection in its own thread: TLS handshake, then the association.

    The thread waits for the association to end, so that the server can count
    connections per peer address exactly.
    """

    server: NodeAssociationServer

    def handle(self) -> None:
        """Handshake (TLS), create the acceptor association and run it to its end."""
        server = self.server
        peer = str(self.client_address[0])
        deadline = server.accepted_at(self.request) + server.settings.acse_timeout
        try:
            sock: socket.socket | None = self.request
            if server.ssl_context is not None:
                sock = server.tls_handshake(cast(socket.socket, sock), peer, deadline)
                if sock is None:
                    return
            assoc = self._association(cast(socket.socket, sock), deadline)
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            assoc.start()
            assoc.join()
        except Exception:
            log.exception("connection from %s failed", peer)
            _close(self.request)
        finally:
            server.release(peer)

    def _association(self, sock: socket.socket, deadline: float) -> Association:
        """An acceptor :class:`Association` on ``sock``, set up as pynetdicom's handler does."""
        server = self.server
        ae = self.ae
        assoc = Association(ae, MODE_ACCEPTOR)
        assoc._server = server
        # "AcceptorThread" in the name is how pynetdicom finds a server's associations.
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        assoc.set_socket(
            BoundedAssociationSocket(
                assoc,
                sock,
                deadline=deadline,
                network_timeout=server.settings.network_timeout,
                max_pdu_size=server.settings.max_pdu_size,
            )
        )
        assoc.acceptor.maximum_length = ae.maximum_pdu_size
        assoc.acceptor.ae_title = server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(server.contexts)
        assoc.requestor.address_info = self.remote
        for event in server.get_events():
            handlers: Any = server.get_handlers(event)
            if event.is_intervention:
                if handlers and handlers[0] is not None:
                    assoc.bind(event, handlers[0], handlers[1])
            else:
                for handler, args in handlers:
                    assoc.bind(event, handler, args)
        return assoc


class NodeAssociationServer(ThreadedAssociationServer):
    """The node's association server (see the module docstring).

    Parameters
    ----------
    ae : AE
        The acceptor AE (:func:`~dicom_node.ingest.scp.build_ae`).
    address : tuple
        ``(host, port)`` to bind.
    ae_title : str
        Our AE title.
    contexts : list of PresentationContext
        Supported presentation contexts.
    ssl_context : ssl.SSLContext, optional
        Serve DICOM TLS with this context.
    evt_handlers : list, optional
        ``(event, handler)`` tuples bound to every association.
    settings : Settings
        Timeouts, limits and ``scp_processes``.
    """

    daemon_threads = True  # connection threads end with their associations; never joined
    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self,
        ae: AE,
        address: tuple[str, int],
        ae_title: str,
        contexts: list[PresentationContext],
        ssl_context: ssl.SSLContext | None = None,
        evt_handlers: list[Any] | None = None,
        *,
        settings: Settings,
    ) -> None:
        self.settings = settings
        self._per_host: dict[str, int] = {}
        self._per_host_lock = threading.Lock()
        self._last_cap_log: dict[str, float] = {}
        self._turned_away: deque[_TurnedAway] = deque()
        self._accepted_at: dict[int, float] = {}
        super().__init__(
            ae,
            address,
            ae_title,
            contexts,
            ssl_context,
            evt_handlers=evt_handlers,
            request_handler=NodeRequestHandler,
        )

    def server_bind(self) -> None:
        """Bind with ``SO_REUSEADDR`` (pynetdicom), plus ``SO_REUSEPORT`` for several processes."""
        if self.settings.scp_processes > 1:
            cast(socket.socket, self.socket).setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept a connection; it gets ``TCP_NODELAY`` and a timeout, never a blocking read.

        Unlike pynetdicom's, this does not wrap the socket in TLS: the
        handshake happens in the connection's thread
        (:meth:`tls_handshake`).
        """
        sock, address = cast(socket.socket, self.socket).accept()
        self._accepted_at[sock.fileno()] = time.monotonic()
        sock.settimeout(self.settings.acse_timeout)
        with contextlib.suppress(OSError):  # not a TCP socket
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, address

    def _admit(self, peer: str) -> bool:
        """Take a connection slot for ``peer`` unless it holds ``max_associations_per_host``."""
        limit = self.settings.max_associations_per_host
        with self._per_host_lock:
            count = self._per_host.get(peer, 0)
            if count < limit:
                self._per_host[peer] = count + 1
                return True
            now = time.monotonic()
            quiet = now - self._last_cap_log.get(peer, -_LOG_INTERVAL) >= _LOG_INTERVAL
            if quiet:
                self._last_cap_log[peer] = now
        if quiet:
            log.warning(
                "connection from %s refused: it already holds %d connections "
                "(DICOM_NODE_MAX_ASSOCIATIONS_PER_HOST)",
                peer,
                limit,
            )
        return False

    def _turn_away(self, request: socket.socket) -> None:
        """Refuse a connection over the per-host cap without a thread.

        TLS connections are closed at once. Others wait (in the accept loop,
        :meth:`service_actions`) for the peer's A-ASSOCIATE-RQ to arrive, are
        answered with an A-ASSOCIATE-RJ (local limit exceeded) and half-closed,
        and are closed :data:`_LINGER_SECONDS` later, so that the peer reads
        the rejection rather than a reset. A peer that sends nothing is closed
        after :data:`_LINGER_SECONDS`.
        """
        if self.ssl_context is not None:
            self.shutdown_request(request)
            return
        request.setblocking(False)
        self._turned_away.append(_TurnedAway(request, time.monotonic() + _LINGER_SECONDS))
        while len(self._turned_away) > _MAX_TURNED_AWAY:
            _drain_and_close(self._turned_away.popleft().sock)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection in a new thread, or turn it away if its host is at the cap."""
        peer = str(client_address[0])
        if not self._admit(peer):
            self._accepted_at.pop(request.fileno(), None)
            self._turn_away(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._accepted_at.pop(request.fileno(), None)
            self.release(peer)
            raise

    def accepted_at(self, request: socket.socket) -> float:
        """When ``request`` was accepted (monotonic clock): its ACSE deadline runs from then."""
        accepted = self._accepted_at.pop(request.fileno(), None)
        return time.monotonic() if accepted is None else accepted

    def service_actions(self) -> None:
        """Run by the accept loop between connections: answer and close turned-away ones."""
        super().service_actions()
        if not self._turned_away:
            return
        now = time.monotonic()
        poller = select.poll()  # not select.select: descriptors may exceed FD_SETSIZE
        for entry in self._turned_away:
            if not entry.answered:
                poller.register(entry.sock, select.POLLIN)
        readable = {fd for fd, _ in poller.poll(0)}
        kept: deque[_TurnedAway] = deque()
        for entry in self._turned_away:
            if not entry.answered and entry.sock.fileno() in readable:
                try:
                    entry.sock.send(_HOST_CAP_REJECT)
                    entry.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    entry.deadline = now
                else:
                    entry.deadline = now + _LINGER_SECONDS
                entry.answered = True
            if entry.deadline <= now:
                _drain_and_close(entry.sock)
            else:
                kept.append(entry)
        self._turned_away = kept

    def server_close(self) -> None:
        """Close the listening socket and any turned-away connection."""
        super().server_close()
        while self._turned_away:
            _drain_and_close(self._turned_away.popleft().sock)

    def release(self, peer: str) -> None:
        """A connection from ``peer`` has ended."""
        with self._per_host_lock:
            count = self._per_host.get(peer, 0) - 1
            if count > 0:
                self._per_host[peer] = count
            else:
                self._per_host.pop(peer, None)

    def connections_from(self, peer: str) -> int:
        """Open connections from ``peer`` (an IP address)."""
        with self._per_host_lock:
            return self._per_host.get(peer, 0)

    def tls_handshake(
        self, sock: socket.socket, peer: str, deadline: float
    ) -> ssl.SSLSocket | None:
        """Run the TLS server handshake within the ACSE deadline.

        Returns
        -------
        ssl.SSLSocket or None
            The TLS connection, or None when the handshake failed or timed out
            (the connection is then closed and one WARNING line logged).
        """
        assert self.ssl_context is not None
        try:
            tls = self.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        except OSError as exc:
            log.warning("TLS connection from %s failed: %s", peer, exc)
            _close(sock)
            return None
        try:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("ACSE timeout")
            tls.settimeout(remaining)  # one deadline for the whole handshake (CPython _ssl)
            tls.do_handshake()
        except (OSError, ValueError) as exc:
            reason = exc.reason if isinstance(exc, ssl.SSLError) and exc.reason else exc
            log.warning("TLS handshake with %s failed: %s", peer, reason or type(exc).__name__)
            _close(tls)
            return None
        return tls


def _drain_and_close(sock: socket.socket) -> None:
    """Read what the peer sent (so that closing sends no reset), then close."""
    with contextlib.suppress(OSError):
        for _ in range(16):
            if not sock.recv(65536):
                break
    sock.close()


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def make_server(ae: AE, settings: Settings, handlers: list[Any]) -> ThreadedAssociationServer:
    """Bind and start serving in a background thread.

    Parameters
    ----------
    ae : AE
        The acceptor AE, with its limits, timeouts and contexts set.
    settings : Settings
        Host, port, TLS, timeouts and limits.
    handlers : list
        ``(event, handler)`` tuples for every association.

    Returns
    -------
    ThreadedAssociationServer
        A :class:`NodeAssociationServer`, listening and serving.

    Raises
    ------
    ConfigError
        If TLS is on and its certificate, key or CA cannot be used.
    OSError
        If the address cannot be bound.
    """
    ssl_context = server_ssl_context(settings) if settings.tls else None
    server = ae.make_server(
        (settings.host, settings.port),
        ae_title=settings.ae_title,
        ssl_context=ssl_context,
        evt_handlers=handlers,
        server_class=NodeAssociationServer,
        settings=settings,
    )
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": _POLL_INTERVAL},
        name=f"AcceptorServer@{settings.port}",
        daemon=True,
    )
    thread.start()
    # As AE.start_server does: AE.shutdown() and the server's shutdown() use this list.
    ae._servers.append(server)
    return server
