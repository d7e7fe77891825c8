"""STOW-RS destination against a small local HTTP server: each answer maps to statuses or errors."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pynetdicom.sop_class import BasicTextSRStorage, SecondaryCaptureImageStorage

from dicom_node.core import dimse
from dicom_node.core.destinations import Destination
from dicom_node.core.errors import DeliveryError, PermanentDeliveryError
from dicom_node.core.settings import Settings
from tests.conftest import free_port
from tests.test_destinations import make_item
from workers.destinations import Outbound, send
from workers.destinations.stow_rs import safe_url

JSON = "application/dicom+json"


@dataclass
class Answer:
    code: int
    body: bytes = b""
    content_type: str = JSON


@dataclass
class FakeStowServer:
    """Answers every POST with ``answer(items' bodies)``; records the requests."""

    answer: Callable[[], Answer] = lambda: Answer(200)
    hold: threading.Event | None = None
    requests: list[tuple[str, str, bytes]] = field(default_factory=list)

    def start(self) -> FakeStowServer:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = self.rfile.read(length)
                fake.requests.append((self.path, self.headers["Content-Type"], body))
                if fake.hold is not None:
                    fake.hold.wait(30)
                    return  # the client gave up long ago: no answer at all
                answer = fake.answer()
                self.send_response(answer.code)
                if answer.body:
                    self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"

    def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", ae_title="NODE_TEST")


@pytest.fixture
def items(tmp_path: Path) -> list[Outbound]:
    return [
        make_item(tmp_path, 1, BasicTextSRStorage),
        make_item(tmp_path, 2, SecondaryCaptureImageStorage),
        make_item(tmp_path, 3, BasicTextSRStorage),
    ]


@pytest.fixture
def server_factory() -> Iterator[Callable[..., FakeStowServer]]:
    started: list[FakeStowServer] = []

    def start(**kwargs: Any) -> FakeStowServer:
        server = FakeStowServer(**kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def stow_answer(
    stored: list[tuple[Outbound, int | None]], failed: list[tuple[Outbound, int]]
) -> bytes:
    """A Store Instances Response (PS3.18 Annex I) in DICOM JSON."""
    ds = Dataset()

    def ref(item: Outbound) -> Dataset:
        r = Dataset()
        r.ReferencedSOPClassUID = item.sop_class_uid
        r.ReferencedSOPInstanceUID = item.sop_instance_uid
        return r

    refs = []
    for item, warning in stored:
        r = ref(item)
        if warning is not None:
            r.WarningReason = warning
        refs.append(r)
    fails = []
    for item, reason in failed:
        r = ref(item)
        r.FailureReason = reason
        fails.append(r)
    if refs:
        ds.ReferencedSOPSequence = refs
    if fails:
        ds.FailedSOPSequence = fails
    return json.dumps(ds.to_json_dict()).encode()


def destination(server: FakeStowServer, timeout: float | None = None) -> Destination:
    return Destination(name="viewer", kind="stow_rs", url=server.url, timeout_seconds=timeout)


def test_200_all_stored_in_one_request(
    items: list[Outbound], settings: Settings, server_factory: Callable[..., FakeStowServer]
) -> None:
    server = server_factory(answer=lambda: Answer(200, stow_answer([(i, None) for i in items], [])))
    sent = send(destination(server), items, settings)
    assert [s.status for s in sent] == [dimse.SUCCESS] * 3
    assert [s.delivery_id for s in sent] == [1, 2, 3]
    assert len(server.requests) == 1
    path, content_type, body = server.requests[0]
    assert path == "/dicom-web/studies"
    assert content_type.startswith("multipart/related")
    assert 'type="application/dicom"' in content_type
    for item in items:
        assert item.sop_instance_uid.encode() in body
    assert all("HTTP 200" in s.detail for s in sent)


def test_200_with_a_warning_reason(
    items: list[Outbound], settings: Settings, server_factory: Callable[..., FakeStowServer]
) -> None:
    body = stow_answer([(items[0], None), (items[1], 0xB000), (items[2], None)], [])
    server = server_factory(answer=lambda: Answer(200, body))
    sent = send(destination(server), items, settings)
    assert [s.status for s in sent] == [0x0000, 0xB000, 0x0000]
    assert [dimse.delivery_verdict(s.status) for s in sent] == ["delivered", "warning", "delivered"]


def test_202_maps_each_item(
    items: list[Outbound], settings: Settings, server_factory: Callable[..., FakeStowServer]
) -> None:
    body = stow_answer([(items[0], 0xB007)], [(items[1], 0xA700)])  # items[2]: not mentioned
    server = server_factory(answer=lambda: Answer(202, body, f"{JSON}; charset=utf-8"))
    sent = send(destination(server), items, settings)
    assert [s.status for s in sent] == [0xB007, 0xA700, dimse.PROCESSING_FAILURE]
    assert [dimse.delivery_verdict(s.status) for s in sent] == ["warning", "retry", "dead"]


def test_409_per_instance_failures(
    items: list[Outbound], settings: Settings, server_factory: Callable[..., FakeStowServer]
) -> None:
    body = stow_answer([], [(items[0], 0xC000), (items[1], 0xA900), (items[2], 0xC122)])
    server = server_factory(answer=lambda: Answer(409, body))
    sent = send(destination(server), items, settings)
    assert [s.status for s in sent] == [0xC000, 0xA900, 0xC122]
    assert {dimse.delivery_verdict(s.status) for s in sent} == {"dead"}


def test_202_without_an_answer_is_retried(
    items: list[Outbound], settings: Settings, server_factory: Callable[..., FakeStowServer]
) -> None:
    server = server_factory(answer=lambda: Answer(202))
    with pytest.raises(DeliveryError) as caught:
        send(destination(server), items, settings)
    assert not isinstance(caught.value, PermanentDeliveryError)


@pytest.mark.parametrize("code", [503, 500, 429, 408])
def test_server_trouble_is_retried_once_per_attempt(
    code: int,
    items: list[Outbound],
    settings: Settings,
    server_factory: Callable[..., FakeStowServer],
) -> None:
    server = server_factory(answer=lambda: Answer(code))
    with pytest.raises(DeliveryError, match=f"HTTP {code}") as caught:
        send(destination(server), items, settings)
    assert not isinstance(caught.value, PermanentDeliveryError)
    assert len(server.requests) == 1  # dicomweb-client's own retries are off


@pytest.mark.parametrize("code", [400, 401, 403, 404, 415])
def test_client_errors_are_permanent(
    code: int,
    items: list[Outbound],
    settings: Settings,
    server_factory: Callable[..., FakeStowServer],
) -> None:
    server = server_factory(answer=lambda: Answer(code, b'{"error": "x"}', "application/json"))
    with pytest.raises(PermanentDeliveryError, match=f"HTTP {code}"):
        send(destination(server), items, settings)


def test_409_without_an_answer_is_permanent(
    items: list[Outbound], settings: Settings, server_factory: Callable[..., FakeStowServer]
) -> None:
    server = server_factory(answer=lambda: Answer(409))
    with pytest.raises(PermanentDeliveryError, match="409"):
        send(destination(server), items, settings)


def test_nothing_listening_is_retried(items: list[Outbound], settings: Settings) -> None:
    dest = Destination(
        name="viewer", kind="stow_rs", url=f"http://127.0.0.1:{free_port()}/dicom-web"
    )
    with pytest.raises(DeliveryError) as caught:
        send(dest, items, settings)
    assert not isinstance(caught.value, PermanentDeliveryError)


def test_server_that_never_answers_times_out(
    items: list[Outbound], settings: Settings, server_factory: Callable[..., FakeStowServer]
) -> None:
    server = server_factory(hold=threading.Event())
    started = time.monotonic()
    with pytest.raises(DeliveryError) as caught:
        send(destination(server, timeout=2), items, settings)
    assert not isinstance(caught.value, PermanentDeliveryError)
    assert 1.5 < time.monotonic() - started < 10


def test_safe_url_drops_credentials() -> None:
    assert safe_url("https://u:secret@pacs.example:8443/dicom-web?token=x") == (
        "https://pacs.example:8443/dicom-web"
    )
