"""PDU-level fuzzing of the SCP over real loopback TCP (hypothesis, bounded).

Raw TCP clients send what a broken or hostile peer would: garbage bytes,
truncated PDUs, a valid A-ASSOCIATE-RQ followed by mutated P-DATA-TF, PDU
headers claiming huge lengths, and connections that stall or trickle. The SCP
runs in this process (the FAKE ``RecordingPublisher`` of test_scp stands in
for Celery), with short ACSE/network timeouts. After each input the node must
still answer a pynetdicom C-ECHO quickly (sent from another loopback address,
127.0.0.2, so per-host limits on the fuzzing address do not apply to it); at
the end its association threads are back to the baseline, its memory growth is
bounded, and nothing is left in the spool's incoming directory.

Every socket operation has a timeout: a fuzz input can fail the test, never
hang it. Counts are bounded and derandomized (reproducible in CI); each test
prints and records (``record_property("fuzz_inputs", n)``) how many inputs it
tried. The raw DICOM Upper Layer client here (PS3.8 section 9.3) is also used
by test_fuzz_dataset for C-STORE requests that pynetdicom refuses to send.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.core.settings import Settings, load_settings
from dicom_node.ingest.scp import StoreSCP
from tests.conftest import free_port, wait_for
from tests.test_scp import RecordingPublisher

CR_CLASS = "1.2.840.10008.5.1.4.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
ACSE_TIMEOUT = 2.0  # s, the node's settings in these tests
NETWORK_TIMEOUT = 3.0  # s
DROP_BOUND = max(ACSE_TIMEOUT, NETWORK_TIMEOUT) + 2.0  # s: a stalled peer must be gone by then
ECHO_BOUND = 5.0  # s: a C-ECHO (associate, echo, release) must take less
REPLY_WAIT = 0.25  # s: how long a fuzz client waits for the node's reaction before closing
ECHO_SOURCE = "127.0.0.2"  # the echo's source address, apart from the fuzzing peer's
MAX_PDU = 1_048_576  # bytes, the node's max_pdu_size here
RSS_BOUND_MIB = 48.0  # growth of this process's resident memory over one test
ENTROPY = "dicom-node-fuzz-pdu"

_FUZZ = settings(
    deadline=None,
    database=None,
    derandomize=True,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),  # no shrinking: bounded time
    suppress_health_check=(HealthCheck.too_slow, HealthCheck.data_too_large),
    report_multiple_bugs=False,
)


def fuzz(max_examples: int) -> settings:
    """Bounded, reproducible hypothesis settings: no deadline, no database, no shrinking."""
    return settings(_FUZZ, max_examples=max_examples)


# --- a raw DICOM Upper Layer client (PS3.8 section 9.3) ----------------------------------


def _ae(title: str) -> bytes:
    return title.encode("ascii").ljust(16, b" ")[:16]


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


def associate_rq(
    contexts: Sequence[tuple[int, str, Sequence[str]]],
    called: str = "DICOM_NODE",
    calling: str = "FUZZ_PDU",
    max_pdu: int = 16384,
) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2): one presentation context per (id, class, syntaxes)."""
    items = _item(0x10, APPLICATION_CONTEXT.encode())
    for context_id, abstract, syntaxes in contexts:
        sub = _item(0x30, abstract.encode()) + b"".join(_item(0x40, s.encode()) for s in syntaxes)
        items += _item(0x20, bytes([context_id, 0, 0, 0]) + sub)
    user = _item(0x51, struct.pack(">L", max_pdu)) + _item(0x52, b"1.2.826.0.1.3680043.9.9999")
    items += _item(0x50, user)
    head = struct.pack(">HH", 1, 0) + _ae(called) + _ae(calling) + b"\x00" * 32
    return _pdu(0x01, head + items)


RELEASE_RQ = _pdu(0x05, b"\x00" * 4)
ABORT = _pdu(0x07, b"\x00" * 4)


def p_data(context_id: int, control: int, payload: bytes) -> bytes:
    """One P-DATA-TF PDU (PS3.8 9.3.5) with one PDV; ``control`` bit 0 command, bit 1 last."""
    pdv = struct.pack(">L", len(payload) + 2) + bytes([context_id, control]) + payload
    return _pdu(0x04, pdv)


def _element(tag: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00"
    return struct.pack("<HHL", 0x0000, tag, len(value)) + value


def command_set(elements: list[tuple[int, bytes]]) -> bytes:
    """A DIMSE command set, Implicit VR Little Endian (PS3.7 section 6.3)."""
    body = b"".join(_element(tag, value) for tag, value in elements)
    return _element(0x0000, struct.pack("<L", len(body))) + body


def echo_rq(message_id: int = 1) -> bytes:
    """C-ECHO-RQ command set (PS3.7 9.3.5.1)."""
    return command_set(
        [
            (0x0002, VERIFICATION.encode()),
            (0x0100, struct.pack("<H", 0x0030)),
            (0x0110, struct.pack("<H", message_id)),
            (0x0800, struct.pack("<H", 0x0101)),
        ]
    )


def store_rq(sop_class: str, sop_instance: str, message_id: int = 1) -> bytes:
    """C-STORE-RQ command set (PS3.7 9.3.1.1); the UIDs are sent as given, unchecked."""
    return command_set(
        [
            (0x0002, sop_class.encode("latin-1")),
            (0x0100, struct.pack("<H", 0x0001)),
            (0x0110, struct.pack("<H", message_id)),
            (0x0700, struct.pack("<H", 0)),
            (0x0800, struct.pack("<H", 0x0000)),
            (0x1000, sop_instance.encode("latin-1")),
        ]
    )


def message(context_id: int, command: bytes, dataset: bytes | None = None, split: int = 0) -> bytes:
    """The P-DATA-TF PDUs of one DIMSE message; the data set cut into ``split`` + 1 fragments."""
    out = p_data(context_id, 0x03, command)
    if dataset is not None:
        size = max(1, -(-len(dataset) // (split + 1)))
        chunks = [dataset[i : i + size] for i in range(0, len(dataset), size)] or [b""]
        for k, chunk in enumerate(chunks):
            out += p_data(context_id, 0x02 if k == len(chunks) - 1 else 0x00, chunk)
    return out


class PeerClosedError(Exception):
    """The node closed or reset the connection."""


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    data = b""
    while len(data) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        try:
            chunk = sock.recv(n - len(data))
        except ConnectionError as exc:
            raise PeerClosedError from exc
        if not chunk:
            raise PeerClosedError
        data += chunk
    return data


def read_pdu(sock: socket.socket, timeout: float) -> tuple[int, bytes]:
    """Read one PDU: (type, body). Raises PeerClosedError or TimeoutError."""
    deadline = time.monotonic() + timeout
    pdu_type, _, length = struct.unpack(">BBL", _recv_exact(sock, 6, deadline))
    if length > 64 * MAX_PDU:
        raise AssertionError(f"node sent a PDU of type {pdu_type:#x} claiming {length} bytes")
    return pdu_type, _recv_exact(sock, length, deadline)


def accepted_syntaxes(ac_body: bytes) -> dict[int, str]:
    """Presentation context id -> transfer syntax of each accepted context of an A-ASSOCIATE-AC."""
    out: dict[int, str] = {}
    pos = 68  # protocol version, reserved, called/calling AE titles, reserved (PS3.8 9.3.3)
    while pos + 4 <= len(ac_body):
        item_type, length = ac_body[pos], struct.unpack(">H", ac_body[pos + 2 : pos + 4])[0]
        value = ac_body[pos + 4 : pos + 4 + length]
        if item_type == 0x21 and len(value) >= 8 and value[2] == 0:
            out[value[0]] = value[8:].rstrip(b"\x00 ").decode("ascii", "replace")
        pos += 4 + length
    return out


def parse_command(data: bytes) -> dict[int, bytes]:
    """Element number -> value of an Implicit VR Little Endian group 0000 command set."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos + 8 <= len(data):
        _, elem, length = struct.unpack("<HHL", data[pos : pos + 8])
        out[elem] = data[pos + 8 : pos + 8 + length]
        pos += 8 + length
    return out


def dimse_status(sock: socket.socket, timeout: float) -> int | None:
    """Read PDUs until a command set with a Status (0000,0900) arrives; None if none comes."""
    deadline = time.monotonic() + timeout
    command = b""
    try:
        while True:
            pdu_type, body = read_pdu(sock, deadline - time.monotonic())
            if pdu_type != 0x04:
                return None  # an A-ABORT or A-RELEASE instead of a response
            pos = 0
            while pos + 6 <= len(body):
                length = struct.unpack(">L", body[pos : pos + 4])[0]
                control, value = body[pos + 5], body[pos + 6 : pos + 4 + length]
                pos += 4 + length
                if control & 0x01:
                    command += value
                    if control & 0x02:
                        status = parse_command(command).get(0x0900)
                        if status is not None:
                            return int(struct.unpack("<H", status[:2])[0])
                        command = b""
    except (PeerClosedError, TimeoutError, OSError):
        return None


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@contextlib.contextmanager
def association(
    port: int, contexts: Sequence[tuple[int, str, Sequence[str]]], timeout: float = 5.0
) -> Iterator[tuple[socket.socket, dict[int, str]]]:
    """A raw socket with an accepted association: (socket, accepted context id -> syntax)."""
    sock = connect(port, timeout)
    try:
        sock.sendall(associate_rq(contexts))
        pdu_type, body = read_pdu(sock, timeout)
        assert pdu_type == 0x02, f"association not accepted (PDU type {pdu_type:#x})"
        yield sock, accepted_syntaxes(body)
    finally:
        sock.close()


def drain(sock: socket.socket, timeout: float) -> str:
    """Read what the node sends until it closes or ``timeout`` passes; name the outcome."""
    deadline = time.monotonic() + timeout
    seen: list[int] = []
    try:
        while True:
            pdu_type, _ = read_pdu(sock, deadline - time.monotonic())
            seen.append(pdu_type)
    except PeerClosedError:
        return "closed" + "".join(f"+{t:#x}" for t in seen[-1:])
    except TimeoutError:
        return "open" + "".join(f"+{t:#x}" for t in seen[-1:])
    except (OSError, AssertionError):
        return "error"


# --- the node and its health checks -------------------------------------------------------


def association_threads() -> int:
    """Live pynetdicom association threads in this process (acceptor and requestor)."""
    return sum(isinstance(t, Association) and t.is_alive() for t in threading.enumerate())


def rss_mib() -> float:
    """Resident memory of this process (the SCP runs in it), MiB (/proc/self/status VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@dataclass
class Node:
    """The SCP under test and its baseline."""

    scp: StoreSCP
    settings: Settings
    threads: int = 0
    rss: float = 0.0
    echo_ae: AE = field(default_factory=lambda: AE(ae_title="ECHO_CHECK"))

    @property
    def port(self) -> int:
        return self.scp.port

    @property
    def incoming(self) -> Path:
        return self.scp.spool.root / ".incoming"

    def echo(self) -> float:
        """One pynetdicom C-ECHO from 127.0.0.2; assert Success within ECHO_BOUND; its seconds."""
        start = time.monotonic()
        assoc = self.echo_ae.associate(
            "127.0.0.1", self.port, ae_title="DICOM_NODE", bind_address=(ECHO_SOURCE, 0)
        )
        assert assoc.is_established, "the node refused or dropped a C-ECHO association"
        try:
            status = assoc.send_c_echo()
            assert status and int(status.Status) == 0x0000, "C-ECHO failed"
        finally:
            assoc.release()
        took = time.monotonic() - start
        assert took < ECHO_BOUND, f"C-ECHO took {took:.1f} s"
        return took

    def leftovers(self) -> list[Path]:
        return (
            [p for p in self.incoming.rglob("*") if p.is_file()] if self.incoming.exists() else []
        )

    def assert_healthy_at_end(self) -> float:
        """Threads back to baseline, nothing in .incoming, bounded memory, C-ECHO answered.

        Returns the growth of resident memory since the baseline, MiB.
        """
        wait_for(
            lambda: association_threads() == 0 and threading.active_count() <= self.threads,
            DROP_BOUND + 5,
            f"association threads to end ({association_threads()} associations, "
            f"{threading.active_count()} threads alive, baseline {self.threads})",
        )
        wait_for(lambda: not self.leftovers(), 5, f"no .incoming leftovers: {self.leftovers()}")
        growth = rss_mib() - self.rss
        assert growth < RSS_BOUND_MIB, f"resident memory grew by {growth:.0f} MiB"
        self.echo()
        return growth


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[Node]:
    settings_ = load_settings(
        data_dir=tmp_path / "node",
        host="127.0.0.1",
        port=free_port(),
        study_quiet_seconds=60,  # nothing is published while fuzzing
        acse_timeout=ACSE_TIMEOUT,
        network_timeout=NETWORK_TIMEOUT,
        dimse_timeout=NETWORK_TIMEOUT,
        max_pdu_size=MAX_PDU,
        min_free_disk_mb=0,
    )
    scp = StoreSCP(settings_, publish=RecordingPublisher())
    scp.start()
    node_ = Node(scp, settings_)
    node_.echo_ae.add_requested_context(Verification)
    for attr in ("acse_timeout", "dimse_timeout", "network_timeout"):
        setattr(node_.echo_ae, attr, ECHO_BOUND)
    node_.echo()  # warm up, then take the baseline
    wait_for(lambda: association_threads() == 0, 5, "the echo's association thread to end")
    node_.threads, node_.rss = threading.active_count(), rss_mib()
    yield node_
    scp.stop()


@dataclass
class Tally:
    """How many inputs a fuzz test tried, and what the node did with them."""

    inputs: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def add(self, outcome: str) -> None:
        self.inputs += 1
        self.outcomes[outcome] += 1


@pytest.fixture()
def tally(
    request: pytest.FixtureRequest, record_property: Callable[[str, object], None]
) -> Iterator[Tally]:
    """Count inputs; print one summary line and record it as the ``fuzz_inputs`` property."""
    found, start = Tally(), time.monotonic()
    yield found
    line = (
        f"FUZZ {request.node.name}: {found.inputs} inputs in {time.monotonic() - start:.1f} s; "
        + ", ".join(f"{k} {v}" for k, v in sorted(found.outcomes.items()))
        + "".join(f"; {note}" for note in found.notes)
    )
    record_property("fuzz_inputs", found.inputs)
    record_property("fuzz_outcomes", dict(found.outcomes))
    print(line)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)


# --- inputs ---------------------------------------------------------------------------------


def cr_dataset(n: int) -> bytes:
    """A small CR instance (no pixels), Explicit VR Little Endian, under fresh UIDs."""
    ds = Dataset()
    ds.SOPClassUID = CR_CLASS
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[ENTROPY, "sop", str(n)])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[ENTROPY, "study", str(n)])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[ENTROPY, "series", str(n)])
    ds.Modality = "CR"
    ds.PatientID = "FUZZ"
    encoded = encode(ds, False, True)
    assert encoded is not None
    return encoded


def stream_for(kind: str, n: int, split: int) -> tuple[bytes, list[int]]:
    """A valid P-DATA stream after association, and the offsets of its length fields."""
    if kind == "echo":
        data = message(1, echo_rq(n & 0xFFFF))
    else:
        ds = cr_dataset(n)
        sop = generate_uid(entropy_srcs=[ENTROPY, "sop", str(n)])
        data = message(3, store_rq(CR_CLASS, sop, n & 0xFFFF), ds, split)
    offsets, pos = [], 0
    while pos + 10 <= len(data):  # each PDU's length, then its PDV's length
        offsets += [pos + 2, pos + 6]
        pos += 6 + struct.unpack(">L", data[pos + 2 : pos + 6])[0]
    return data, offsets


CONTEXTS = [
    (1, VERIFICATION, [ImplicitVRLittleEndian]),
    (3, CR_CLASS, [ExplicitVRLittleEndian]),
]

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 16), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(0, 1 << 16), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=32)),
    st.tuples(
        st.just("length"),
        st.integers(0, 64),
        st.sampled_from([0, 1, 2, 5, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, -1, +1]),
    ),
)


def mutate(data: bytes, offsets: list[int], ops: list[tuple[str, int, object]]) -> bytes:
    """Apply flips, cuts, insertions and length-field rewrites to a P-DATA stream."""
    buf = bytearray(data)
    for op, where, what in ops:
        if not buf:
            break
        pos = where % len(buf)
        if op == "flip":
            buf[pos] = int(what)  # type: ignore[call-overload]
        elif op == "cut":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = bytes(what)  # type: ignore[call-overload]
        else:
            at = offsets[where % len(offsets)]
            if at + 4 > len(buf):
                continue
            old = struct.unpack(">L", buf[at : at + 4])[0]
            new = old + int(what) if what in (-1, 1) else int(what)  # type: ignore[call-overload]
            buf[at : at + 4] = struct.pack(">L", new & 0xFFFFFFFF)
    return bytes(buf)


# --- tests ----------------------------------------------------------------------------------


def test_garbage_and_truncated_pdus(node: Node, tally: Tally) -> None:
    """Random bytes, and valid A-ASSOCIATE-RQs cut short, sent on fresh connections."""
    valid = associate_rq(CONTEXTS)

    garbage = st.binary(min_size=0, max_size=2048)
    pdu_like = st.tuples(  # a PDU header of any type with a plausible length, random body
        st.integers(0, 10), st.integers(0, 4096), st.binary(max_size=512)
    ).map(lambda t: struct.pack(">BBL", t[0], 0, t[1]) + t[2])
    truncated = st.integers(0, len(valid) - 1).map(lambda cut: valid[:cut])

    @fuzz(80)
    @given(data=st.one_of(garbage, pdu_like, truncated), close_at_once=st.booleans())
    def run(data: bytes, close_at_once: bool) -> None:
        with connect(node.port) as sock:
            with contextlib.suppress(OSError):
                sock.sendall(data)
            outcome = "client-closed" if close_at_once else drain(sock, REPLY_WAIT)
        tally.add(outcome)
        if tally.inputs % 10 == 0:
            node.echo()

    run()
    tally.notes.append(f"resident memory {node.assert_healthy_at_end():+.1f} MiB")


def test_mutated_p_data_after_association(node: Node, tally: Tally) -> None:
    """A valid association, then a C-ECHO or C-STORE whose P-DATA-TF PDUs are mutated."""

    @fuzz(60)
    @given(
        kind=st.sampled_from(["echo", "store"]),
        split=st.integers(0, 3),
        ops=st.lists(mutation, min_size=1, max_size=4),
        release=st.booleans(),
    )
    def run(kind: str, split: int, ops: list[tuple[str, int, object]], release: bool) -> None:
        data, offsets = stream_for(kind, tally.inputs, split)
        with association(node.port, CONTEXTS) as (sock, accepted):
            assert accepted == {1: ImplicitVRLittleEndian, 3: ExplicitVRLittleEndian}
            with contextlib.suppress(OSError):
                sock.sendall(mutate(data, offsets, ops) + (RELEASE_RQ if release else b""))
            tally.add(f"{kind}:{drain(sock, REPLY_WAIT)}")
        if tally.inputs % 10 == 0:
            node.echo()

    run()
    tally.notes.append(f"resident memory {node.assert_healthy_at_end():+.1f} MiB")


def test_aborted_mid_data_set_leaves_no_incoming_file(node: Node, tally: Tally) -> None:
    """A C-STORE whose data set stops half way, then A-ABORT or a closed socket."""

    @fuzz(12)
    @given(cut=st.floats(0.05, 0.95), abort=st.booleans())
    def run(cut: float, abort: bool) -> None:
        data, _ = stream_for("store", 10_000 + tally.inputs, 3)
        with association(node.port, CONTEXTS) as (sock, _):
            sock.sendall(data[: int(len(data) * cut)] + (ABORT if abort else b""))
        tally.add("abort" if abort else "close")

    run()
    tally.notes.append(f"resident memory {node.assert_healthy_at_end():+.1f} MiB")


def test_raw_client_stores_an_unmutated_instance(node: Node) -> None:
    """The raw client itself is right: an unmutated C-STORE is stored (0x0000)."""
    data, _ = stream_for("store", 20_000, 2)
    with association(node.port, CONTEXTS) as (sock, _):
        sock.sendall(data)
        assert dimse_status(sock, 5) == 0x0000
        sock.sendall(RELEASE_RQ)
        assert drain(sock, 5).startswith("closed")
    assert list(node.scp.spool.root.glob("*/*.dcm"))
    node.assert_healthy_at_end()


def test_huge_pdu_length_is_not_buffered(node: Node, tally: Tally) -> None:
    """A PDU header claiming up to 4 GiB, then a stream of bytes: the node must not buffer it.

    The node must close the connection before the client has pushed 32 MiB
    (a few MiB fit in the loopback socket buffers), and its resident memory
    must not grow by more than a few PDUs.
    """
    budget = 32 << 20
    chunk = b"\x00" * (64 << 10)

    @fuzz(8)
    @given(
        pdu_type=st.sampled_from([0x01, 0x04, 0x05, 0x07, 0x02, 0x06]),
        length=st.integers(4 * MAX_PDU, 0xFFFFFFFF),
        associated=st.booleans(),
    )
    def run(pdu_type: int, length: int, associated: bool) -> None:
        before = rss_mib()
        peak = before
        sent, closed = 0, False
        with connect(node.port, timeout=NETWORK_TIMEOUT + 1) as sock:
            if associated:
                sock.sendall(associate_rq(CONTEXTS))
                assert read_pdu(sock, 5)[0] == 0x02
            try:
                sock.sendall(struct.pack(">BBL", pdu_type, 0, length))
                while sent < budget:
                    sock.sendall(chunk)
                    sent += len(chunk)
                    peak = max(peak, rss_mib())
            except OSError:  # reset, broken pipe, or a send that timed out: refused
                closed = True
            if not closed:
                closed = drain(sock, 0.2).startswith("closed")
        tally.add(f"closed-after-{sent >> 20}MiB" if closed else "buffered")
        assert closed and sent < budget, (
            f"PDU type {pdu_type:#x} claiming {length} bytes: node read {sent >> 20} MiB "
            f"without closing (resident memory +{peak - before:.0f} MiB)"
        )
        assert peak - before < 4 * MAX_PDU / (1 << 20) + 8, f"memory +{peak - before:.0f} MiB"
        node.echo()

    run()
    tally.notes.append(f"resident memory {node.assert_healthy_at_end():+.1f} MiB")


STALLS = [
    "connect-only",  # TCP connection, not one byte
    "half-header",  # 1-5 bytes of a PDU header
    "half-associate",  # part of an A-ASSOCIATE-RQ
    "trickle-associate",  # an A-ASSOCIATE-RQ, one byte every 0.25 s
    "idle-associated",  # associated, then silent
    "half-p-data",  # associated, then part of a P-DATA-TF
]


def _stall(
    port: int, kind: str, cut: int, dropped: dict[str, float], key: str, stuck: threading.Event
) -> None:
    """One stalling peer; records in ``dropped`` how long the node took to close on it."""
    start = time.monotonic()
    try:
        with connect(port, timeout=DROP_BOUND + 2) as sock:
            valid = associate_rq(CONTEXTS)
            if kind == "half-header":
                sock.sendall(valid[: 1 + cut % 5])
            elif kind == "half-associate":
                sock.sendall(valid[: 6 + cut % (len(valid) - 6)])
            elif kind == "trickle-associate":
                stuck.set()  # trickling is its stall
                for byte in valid:
                    sock.sendall(bytes([byte]))
                    sock.settimeout(0.25)
                    with contextlib.suppress(TimeoutError):
                        if not sock.recv(1 << 16):
                            break
                    if time.monotonic() - start > DROP_BOUND + 1:
                        break
            elif kind in ("idle-associated", "half-p-data"):
                sock.sendall(valid)
                read_pdu(sock, 5)
                if kind == "half-p-data":
                    data, _ = stream_for("store", 30_000 + cut, 0)
                    sock.sendall(data[: 1 + cut % (len(data) - 1)])
            stuck.set()
            outcome = drain(sock, max(DROP_BOUND + 1 - (time.monotonic() - start), 0.1))
            if outcome.startswith("closed"):
                dropped[key] = time.monotonic() - start
    except (OSError, PeerClosedError):
        dropped[key] = time.monotonic() - start
    finally:
        stuck.set()


def test_stalled_peers_are_dropped_and_never_jam(node: Node, tally: Tally) -> None:
    """Up to 10 stalled or trickling connections at once: C-ECHO still answers during
    the stall, and each stalled connection is dropped within the ACSE or network timeout."""

    @fuzz(4)
    @given(
        st.lists(
            st.tuples(st.sampled_from(STALLS), st.integers(0, 1 << 16)), min_size=1, max_size=10
        )
    )
    def run(stalls: list[tuple[str, int]]) -> None:
        dropped: dict[str, float] = {}
        stuck = [threading.Event() for _ in stalls]
        threads = [
            threading.Thread(
                target=_stall, args=(node.port, kind, cut, dropped, f"{k}:{kind}", stuck[k])
            )
            for k, (kind, cut) in enumerate(stalls)
        ]
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: all(e.is_set() for e in stuck), 10, "every peer to stall")
            node.echo()  # answered while they stall
        finally:
            for thread in threads:
                thread.join(DROP_BOUND + 5)
        for kind, _ in stalls:
            tally.add(kind)
        slow = {k: v for k, v in dropped.items() if v > DROP_BOUND}
        kept = [f"{k}:{kind}" for k, (kind, _) in enumerate(stalls) if f"{k}:{kind}" not in dropped]
        assert not kept and not slow, f"not dropped within {DROP_BOUND} s: {kept} {slow}"

    run()
    tally.notes.append(f"resident memory {node.assert_healthy_at_end():+.1f} MiB")
