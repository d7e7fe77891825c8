"""Who may associate: calling AE allowlist (per host) and called AE title, over real loopback.

Every loopback address 127.0.0.0/8 reaches the node, so a second "host" is a
pynetdicom SCU bound to 127.0.0.2. The task publisher is the FAKE
``RecordingPublisher`` of test_scp.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.core.errors import ConfigError
from dicom_node.core.settings import Settings
from dicom_node.ingest.access import AccessPolicy, access_handlers
from dicom_node.ingest.scp import StoreSCP
from tests.conftest import dcmtk_env, free_port, require_tool, wait_for
from tests.test_scp import RecordingPublisher

Start = Callable[..., StoreSCP]


@pytest.fixture()
def start_node(tmp_path: Path) -> Iterator[Start]:
    nodes: list[StoreSCP] = []

    def start(**overrides: object) -> StoreSCP:
        settings = Settings(
            data_dir=tmp_path,
            host="127.0.0.1",
            port=free_port(),
            study_quiet_seconds=0.5,
            acse_timeout=5,
            **overrides,  # type: ignore[arg-type]
        )
        scp = StoreSCP(settings, publish=RecordingPublisher())
        scp.start()
        nodes.append(scp)
        return scp

    yield start
    for scp in nodes:
        scp.stop()


def associate(
    port: int, calling: str = "MODALITY1", called: str = "DICOM_NODE", source: str = "127.0.0.1"
) -> Association:
    ae = AE(ae_title=calling)
    ae.acse_timeout = 5
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title=called, bind_address=(source, 0))


def rejection(assoc: Association) -> tuple[int, int, int]:
    """(result, source, reason) of the A-ASSOCIATE-RJ the acceptor sent."""
    assert assoc.is_rejected, "association was not rejected"
    rsp = assoc.acceptor.primitive
    assert rsp is not None
    return int(rsp.result), int(rsp.result_source), int(rsp.diagnostic)  # type: ignore[arg-type]


def echo_ok(assoc: Association) -> bool:
    assert assoc.is_established
    try:
        return int(assoc.send_c_echo().Status) == 0x0000
    finally:
        assoc.release()


def test_unknown_calling_ae_rejected_permanent_user_reason_3(
    start_node: Start, caplog: pytest.LogCaptureFixture
) -> None:
    scp = start_node(calling_aes="MODALITY1,CT2@127.0.0.1")
    with caplog.at_level(logging.WARNING, logger="dicom_node.ingest.access"):
        assoc = associate(scp.port, calling="STRANGER")
    # PS3.8 Table 9-21: rejected-permanent, DICOM UL service-user, calling-AE-title-not-recognized
    assert rejection(assoc) == (1, 1, 3)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1
    assert "'STRANGER'" in lines[0] and "'DICOM_NODE'" in lines[0] and "127.0.0.1" in lines[0]
    assert "calling AE title not recognized" in lines[0]
    # The rejected association ends at once: it holds no slot.
    wait_for(lambda: not scp.ae.active_associations, 2, "the rejected association to end")
    # Listed AEs get in, with or without a host.
    assert echo_ok(associate(scp.port, calling="MODALITY1"))
    assert echo_ok(associate(scp.port, calling="CT2"))


def test_listed_ae_from_the_wrong_host_rejected(
    start_node: Start, caplog: pytest.LogCaptureFixture
) -> None:
    scp = start_node(calling_aes="MODALITY1@127.0.0.2,LOCAL@localhost")
    with caplog.at_level(logging.WARNING, logger="dicom_node.ingest.access"):
        assoc = associate(scp.port, calling="MODALITY1", source="127.0.0.1")
    assert rejection(assoc) == (1, 1, 3)
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "'MODALITY1'" in line and "127.0.0.1" in line and "not allowed from this host" in line
    # From its own address it is accepted; a host name is resolved once, at start.
    assert echo_ok(associate(scp.port, calling="MODALITY1", source="127.0.0.2"))
    assert echo_ok(associate(scp.port, calling="LOCAL", source="127.0.0.1"))
    assert rejection(associate(scp.port, calling="LOCAL", source="127.0.0.2")) == (1, 1, 3)


def test_wrong_called_ae_rejected_reason_7(
    start_node: Start, caplog: pytest.LogCaptureFixture
) -> None:
    scp = start_node()
    with caplog.at_level(logging.WARNING, logger="dicom_node.ingest.access"):
        assoc = associate(scp.port, called="NOT_THE_NODE")
    # PS3.8 Table 9-21: rejected-permanent, service-user, called-AE-title-not-recognized
    assert rejection(assoc) == (1, 1, 7)
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "'NOT_THE_NODE'" in line and "'MODALITY1'" in line and "127.0.0.1" in line
    assert echo_ok(associate(scp.port))  # no allowlist: any calling AE


def test_echoscu_with_wrong_called_ae_fails(start_node: Start) -> None:
    scp = start_node()

    def echoscu(called: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [require_tool("echoscu"), "-aec", called, "127.0.0.1", str(scp.port)],
            env=dcmtk_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )

    out = echoscu("NOT_THE_NODE")
    assert out.returncode != 0
    assert "Called AE Title Not Recognized" in out.stdout + out.stderr
    assert echoscu("DICOM_NODE").returncode == 0


def test_called_ae_check_can_be_turned_off(start_node: Start) -> None:
    scp = start_node(require_called_ae=False)
    assert echo_ok(associate(scp.port, called="ANY_TITLE"))


def test_policy_without_restrictions_adds_no_handler() -> None:
    assert access_handlers(Settings(require_called_ae=False)) == []
    assert len(access_handlers(Settings())) == 1


def test_unresolvable_host_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="does not resolve"):
        AccessPolicy(Settings(calling_aes="CT@no-such-host.invalid"))


def test_ipv4_mapped_peer_matches_ipv4_entry() -> None:
    policy = AccessPolicy(Settings(calling_aes="CT@10.1.2.3"), resolve=lambda host: [host])
    assert policy.check("CT", "DICOM_NODE", "::ffff:10.1.2.3") is None
    assert policy.check("CT  ", "DICOM_NODE  ", "10.1.2.3") is None
    refused = policy.check("CT", "DICOM_NODE", "10.1.2.4")
    assert refused is not None and (refused.result, refused.source, refused.reason) == (1, 1, 3)
