"""The half-PDU jam and the 4 GiB PDU of issue 6, against a real node over loopback.

Two mechanisms keep stalled peers from locking modalities out, and each test
shows one of them on its own:

- deadlines: a connection that has not completed association negotiation
  within the ACSE timeout is closed, however it stalls (silent, half a PDU,
  or trickling one byte at a time), so its association slot comes back;
- the per-host cap: one address holds at most ``max_associations_per_host``
  connections, so a stalled host cannot fill ``max_associations`` at all.

Every 127.0.0.0/8 address is loopback, so a second host is a socket bound to
127.0.0.2. The task publisher is the FAKE ``RecordingPublisher`` of test_scp.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.core.settings import Settings
from dicom_node.ingest.scp import StoreSCP
from dicom_node.ingest.server import NodeAssociationServer, make_server
from tests.conftest import free_port, wait_for
from tests.test_scp import RecordingPublisher

MARGIN = 3.0  # scheduling slack: on a loaded 2-core runner the DUL threads (1 ms polling) lag


def half_pdu() -> bytes:
    """The first 56 bytes of an A-ASSOCIATE-RQ whose header promises 1,000."""
    body = struct.pack(">HH", 1, 0) + b"DICOM_NODE".ljust(16) + b"JAMMER".ljust(16) + bytes(16)
    return struct.pack(">BBI", 0x01, 0, 1000) + body


Start = Callable[..., StoreSCP]


@pytest.fixture()
def start_node(tmp_path: Path) -> Iterator[Start]:
    nodes: list[StoreSCP] = []

    def start(**overrides: object) -> StoreSCP:
        values: dict[str, object] = {
            "data_dir": tmp_path,
            "host": "127.0.0.1",
            "port": free_port(),
            "study_quiet_seconds": 0.5,
            "acse_timeout": 10,
            "network_timeout": 10,
            "max_associations": 10,
        }
        values.update(overrides)
        scp = StoreSCP(Settings(**values), publish=RecordingPublisher())  # type: ignore[arg-type]
        scp.start()
        nodes.append(scp)
        return scp

    yield start
    for scp in nodes:
        scp.stop()


@pytest.fixture()
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def connect(port: int, opened: list[socket.socket], source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    opened.append(sock)
    return sock


def closed_by_peer(sock: socket.socket, timeout: float) -> bytes:
    """Read until the node closes the connection; what it sent first. Fails on timeout."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def associate(port: int, source: str = "127.0.0.1") -> Association:
    ae = AE(ae_title="MODALITY1")
    ae.acse_timeout = 5
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title="DICOM_NODE", bind_address=(source, 0))


def echo(port: int, source: str = "127.0.0.1") -> bool:
    assoc = associate(port, source)
    if not assoc.is_established:
        return False
    try:
        return int(assoc.send_c_echo().Status) == 0x0000
    finally:
        assoc.release()


def rejection(assoc: Association) -> tuple[int, int, int]:
    assert assoc.is_rejected
    rsp = assoc.acceptor.primitive
    assert rsp is not None
    return int(rsp.result), int(rsp.result_source), int(rsp.diagnostic)  # type: ignore[arg-type]


def vm_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def test_stalled_peers_are_dropped_within_the_acse_timeout(
    start_node: Start, sockets: list[socket.socket]
) -> None:
    """Deadlines alone (the per-host cap set out of the way): the jam clears itself."""
    acse_timeout = 3.0
    scp = start_node(max_associations_per_host=1000, acse_timeout=acse_timeout)
    attack = time.monotonic()
    connected: list[float] = []
    for n in range(12):
        sock = connect(scp.port, sockets)
        connected.append(time.monotonic())
        if n < 10:
            sock.sendall(half_pdu())
    # sockets[10] stays silent; sockets[11] trickles one byte every 0.3 s, so
    # that no single read ever waits long: only a deadline can end it.
    trickler = sockets[11]
    stop = threading.Event()

    def trickle() -> None:
        with contextlib.suppress(OSError):
            for byte in half_pdu():
                if stop.wait(0.3):
                    return
                trickler.send(bytes([byte]))

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        wait_for(
            lambda: len(scp.ae.active_associations) >= 10 or time.monotonic() - attack > 1.5,
            5,
            "the stalled associations",
        )
        if time.monotonic() - attack < 1.5:
            # The jam of issue 6: every association slot is taken ...
            assert rejection(associate(scp.port)) == (2, 3, 2)  # local-limit-exceeded
        # ... until the node drops each stalled connection at its ACSE deadline.
        for sock, since in zip(sockets, connected, strict=True):
            assert closed_by_peer(sock, acse_timeout + MARGIN) == b""
            assert time.monotonic() - since < acse_timeout + MARGIN
        wait_for(lambda: echo(scp.port), MARGIN, "a C-ECHO after the stalled peers were dropped")
        wait_for(lambda: not scp.ae.active_associations, MARGIN, "no association left")
    finally:
        stop.set()
        thread.join(5)


def test_one_host_cannot_take_every_association(
    start_node: Start, sockets: list[socket.socket]
) -> None:
    """The per-host cap alone (a long ACSE timeout): other hosts are never locked out."""
    scp = start_node(max_associations_per_host=4, acse_timeout=30, network_timeout=30)
    held = [connect(scp.port, sockets) for _ in range(4)]
    for sock in held:
        sock.sendall(half_pdu())
    wait_for(lambda: len(scp.ae.active_associations) >= 4, 5, "4 stalled associations")
    started = time.monotonic()
    for _ in range(8):  # beyond the cap: answered at once, then closed
        extra = connect(scp.port, sockets)
        extra.sendall(half_pdu())
        answer = closed_by_peer(extra, MARGIN)
        # A-ASSOCIATE-RJ: rejected-transient, service-provider (presentation), local-limit-exceeded
        assert answer == bytes.fromhex("03000000000400020302"), answer
    assert len(scp.ae.active_associations) == 4
    # A well-behaved SCU from the capped host is refused too (pynetdicom's requestor may
    # report an RJ that arrives before it checks its own connection as an abort) ...
    refused = associate(scp.port)
    assert not refused.is_established
    if refused.is_rejected:
        assert rejection(refused) == (2, 3, 2)
    # ... and a modality on another host gets in at once.
    assert echo(scp.port, source="127.0.0.2")
    assert time.monotonic() - started < 2 * MARGIN
    for sock in held:  # the stalled ones were never dropped: the cap, not a timeout, did it
        sock.settimeout(0)
        with pytest.raises(BlockingIOError):
            sock.recv(1)


@pytest.mark.parametrize("established", [False, True], ids=["first-pdu", "in-association"])
def test_pdu_claiming_4_gib_is_refused_unbuffered(
    start_node: Start, sockets: list[socket.socket], established: bool
) -> None:
    scp = start_node()
    assoc: Association | None = None
    if established:
        assoc = associate(scp.port)
        assert assoc.is_established
        sock = assoc.dul.socket.socket  # type: ignore[union-attr]
        assert sock is not None
        header = struct.pack(">BBI", 0x04, 0, 0xFFFFFFFF)  # P-DATA-TF
    else:
        sock = connect(scp.port, sockets)
        header = struct.pack(">BBI", 0x01, 0, 0xFFFFFFFF)  # A-ASSOCIATE-RQ
    garbage = bytes(range(256)) * 4096  # 1 MiB
    total = 50 * len(garbage)
    rss_before = vm_rss_kib()
    sent = 0
    sock.settimeout(10)
    with contextlib.suppress(OSError):
        sock.sendall(header)
        while sent < total:
            sock.sendall(garbage)
            sent += len(garbage)
    growth_mib = (vm_rss_kib() - rss_before) / 1024
    assert sent < total, "the node kept reading a PDU of 4 GiB"
    assert growth_mib < 10, f"RSS grew by {growth_mib:.1f} MiB while {sent >> 20} MiB were sent"
    if assoc is not None:
        wait_for(lambda: not assoc.is_established, 5, "the association to end")
    assert echo(scp.port)  # the node still answers


def test_accepted_sockets_and_shared_port(start_node: Start) -> None:
    """TCP_NODELAY on accepted connections; SO_REUSEPORT when several SCP processes share a port."""
    scp = start_node(scp_processes=2, network_timeout=7)
    assoc = associate(scp.port)
    assert assoc.is_established
    try:
        (acceptor,) = wait_for(lambda: scp.ae.active_associations, 5, "the acceptor")
        accepted = acceptor.dul.socket.socket
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        # Never a blocking socket: the ACSE deadline, then the network timeout.
        assert 0 < accepted.gettimeout() <= 10
        assert int(assoc.send_c_echo().Status) == 0x0000
        assert accepted.gettimeout() == 7
    finally:
        assoc.release()
    # A second process's server binds the same port (here: a second AE in this process).
    other_ae = AE(ae_title="DICOM_NODE")
    other_ae.add_supported_context(Verification)
    other = make_server(other_ae, scp.settings, [])
    try:
        assert other.server_address[1] == scp.port
    finally:
        other.shutdown()
    # Connection slots per host are given back when associations end.
    server = scp._server
    assert isinstance(server, NodeAssociationServer)
    wait_for(lambda: server.connections_from("127.0.0.1") == 0, 5, "the slot to be released")
