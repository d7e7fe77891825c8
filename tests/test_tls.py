"""DICOM TLS (PS3.15 Annex B, BCP 195 profiles) over real loopback associations.

A throwaway CA, server and client certificate are made with the ``openssl``
command in a temporary directory. Peers: pynetdicom SCUs with an
:class:`ssl.SSLContext`, raw TLS sockets, and dcmtk ``storescu +tls``. The task
publisher is the FAKE ``RecordingPublisher`` of test_scp.
"""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.core.errors import ConfigError
from dicom_node.core.settings import Settings
from dicom_node.ingest.scp import StoreSCP
from dicom_node.ingest.tls import BCP195_TLS12_CIPHERS, server_ssl_context
from tests.conftest import dcmtk_env, free_port, require_tool, wait_for, with_new_uids
from tests.test_scp import RecordingPublisher

CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # self-signed, not from the CA
    rogue_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(
        [require_tool("openssl"), *args], cwd=cwd, check=True, capture_output=True, timeout=60
    )


def _leaf(directory: Path, name: str, extensions: str) -> None:
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    (directory / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext",
        cwd=directory,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-subj", "/CN=dicom-node test CA", "-days", "2",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    _leaf(
        directory,
        "server",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    _leaf(directory, "client", "extendedKeyUsage=clientAuth\n")
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "rogue.key", "-out", "rogue.pem", "-subj", "/CN=rogue", "-days", "2",
        cwd=directory,
    )  # fmt: skip
    return Pki(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        rogue_cert=directory / "rogue.pem",
        rogue_key=directory / "rogue.key",
    )


Start = Callable[..., StoreSCP]


@pytest.fixture()
def start_node(tmp_path: Path, pki: Pki) -> Iterator[Start]:
    nodes: list[StoreSCP] = []

    def start(**overrides: object) -> StoreSCP:
        values: dict[str, object] = {
            "data_dir": tmp_path / "node",
            "host": "127.0.0.1",
            "port": free_port(),
            "study_quiet_seconds": 0.5,
            "tls": True,
            "tls_certificate": pki.server_cert,
            "tls_private_key": pki.server_key,
            "acse_timeout": 10,
        }
        values.update(overrides)
        scp = StoreSCP(Settings(**values), publish=RecordingPublisher())  # type: ignore[arg-type]
        scp.start()
        nodes.append(scp)
        return scp

    yield start
    for scp in nodes:
        scp.stop()


def client_context(
    pki: Pki, *, cert: bool = True, rogue: bool = False, tls12_only: bool = False
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if tls12_only:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    if rogue:
        context.load_cert_chain(pki.rogue_cert, pki.rogue_key)
    elif cert:
        context.load_cert_chain(pki.client_cert, pki.client_key)
    return context


def associate(port: int, context: ssl.SSLContext | None, *contexts: str) -> Association:
    ae = AE(ae_title="MODALITY1")
    ae.acse_timeout = 5
    ae.network_timeout = 5
    ae.add_requested_context(Verification)
    for sop_class in contexts:
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    tls_args = (context, "localhost") if context is not None else None
    return ae.associate("127.0.0.1", port, ae_title="DICOM_NODE", tls_args=tls_args)


def test_pynetdicom_echo_and_store_over_tls(
    start_node: Start, pki: Pki, ct_path: Path, tmp_path: Path
) -> None:
    scp = start_node(tls_client_ca=pki.ca, tls_verify_client=True)
    instance = dcmread(with_new_uids(ct_path, tmp_path / "ct.dcm"))
    for tls12_only in (False, True):
        assoc = associate(scp.port, client_context(pki, tls12_only=tls12_only), CT_CLASS)
        assert assoc.is_established
        try:
            tls = assoc.dul.socket.socket  # type: ignore[union-attr]
            assert isinstance(tls, ssl.SSLSocket)
            cipher, version, _ = tls.cipher()  # type: ignore[misc]
            if tls12_only:
                assert version == "TLSv1.2" and cipher in BCP195_TLS12_CIPHERS.split(":")
            else:
                assert version == "TLSv1.3"
            assert int(assoc.send_c_echo().Status) == 0x0000
            assert int(assoc.send_c_store(instance).Status) == 0x0000
        finally:
            assoc.release()
    stored = scp.spool.path_for(instance.StudyInstanceUID, instance.SOPInstanceUID)
    assert stored.is_file()


def test_plain_tcp_client_fails_on_the_tls_port(
    start_node: Start, caplog: pytest.LogCaptureFixture
) -> None:
    scp = start_node()
    with caplog.at_level(logging.WARNING, logger="dicom_node.ingest.server"):
        assoc = associate(scp.port, None)
        assert not assoc.is_established
        wait_for(
            lambda: any(
                "TLS handshake with 127.0.0.1 failed" in r.getMessage() for r in caplog.records
            ),
            5,
            "the handshake failure to be logged",
        )


def _raw_tls_handshake(port: int, context: ssl.SSLContext) -> str:
    """Handshake with the node from a bare TLS socket; the negotiated version, or the error."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                # TLS 1.3 reports a refused client certificate only on the first read.
                tls.settimeout(5)
                tls.sendall(b"\x00")
                tls.recv(1)
                return str(tls.version())
        except (ssl.SSLError, ConnectionError) as exc:
            return f"refused: {exc}"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_1_1_client_refused(start_node: Start, caplog: pytest.LogCaptureFixture) -> None:
    scp = start_node()
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")  # let the client itself offer TLS 1.0/1.1
    with caplog.at_level(logging.WARNING, logger="dicom_node.ingest.server"):
        assert _raw_tls_handshake(scp.port, old).startswith("refused")
        # The server refused it (not the client's own library): its log says why.
        wait_for(
            lambda: any("UNSUPPORTED_PROTOCOL" in r.getMessage() for r in caplog.records),
            5,
            "the server to log the refused protocol version",
        )


def test_client_certificate_required_when_configured(start_node: Start, pki: Pki) -> None:
    scp = start_node(tls_client_ca=pki.ca, tls_verify_client=True)
    assert _raw_tls_handshake(scp.port, client_context(pki, cert=False)).startswith("refused")
    assert _raw_tls_handshake(scp.port, client_context(pki, rogue=True)).startswith("refused")
    assert not associate(scp.port, client_context(pki, cert=False)).is_established
    assoc = associate(scp.port, client_context(pki))
    assert assoc.is_established
    assoc.release()


def test_stalled_tls_client_does_not_block_the_listener(start_node: Start, pki: Pki) -> None:
    acse_timeout = 3.0
    scp = start_node(acse_timeout=acse_timeout)
    started = time.monotonic()
    stalled = [socket.create_connection(("127.0.0.1", scp.port)) for _ in range(3)]
    try:
        assoc = associate(scp.port, client_context(pki))
        assert assoc.is_established
        assoc.release()
        assert time.monotonic() - started < acse_timeout - 0.5  # served while they stall
        for sock in stalled:  # and the silent ones are dropped at the ACSE deadline
            sock.settimeout(acse_timeout + 3)
            assert sock.recv(1) == b""
        assert time.monotonic() - started < acse_timeout + 3
    finally:
        for sock in stalled:
            sock.close()


def test_dcmtk_storescu_over_tls(
    start_node: Start, pki: Pki, ct_path: Path, tmp_path: Path
) -> None:
    storescu = require_tool("storescu")
    scp = start_node(tls_client_ca=pki.ca, tls_verify_client=True)
    path = with_new_uids(ct_path, tmp_path / "ct.dcm")
    for profile in ("+py", "+pz"):  # Non-downgrading BCP 195 (default); Extended BCP 195
        out = subprocess.run(
            [
                storescu, "+tls", str(pki.client_key), str(pki.client_cert),
                "+cf", str(pki.ca), profile, "-aet", "MODALITY1", "-aec", "DICOM_NODE",
                "127.0.0.1", str(scp.port), str(path),
            ],
            env=dcmtk_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        if "unrecognized option" in out.stderr:
            pytest.skip(f"this dcmtk has no TLS: {out.stderr.strip()[:200]}")
        assert out.returncode == 0, out.stderr
    ds = dcmread(path, stop_before_pixels=True)
    assert scp.spool.path_for(ds.StudyInstanceUID, ds.SOPInstanceUID).is_file()


def test_tls_configuration_errors(pki: Pki, tmp_path: Path) -> None:
    def settings(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "tls": True,
            "tls_certificate": pki.server_cert,
            "tls_private_key": pki.server_key,
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    context = server_ssl_context(settings())
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    names = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert names and names <= set(BCP195_TLS12_CIPHERS.split(":"))
    assert context.verify_mode == ssl.CERT_NONE
    assert server_ssl_context(settings(tls_client_ca=pki.ca)).verify_mode == ssl.CERT_OPTIONAL
    verifying = server_ssl_context(settings(tls_client_ca=pki.ca, tls_verify_client=True))
    assert verifying.verify_mode == ssl.CERT_REQUIRED

    with pytest.raises(ConfigError, match=r"TLS_CERTIFICATE=.*no such file"):
        server_ssl_context(settings(tls_certificate=tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="matching private key"):
        server_ssl_context(settings(tls_private_key=pki.client_key))
    (tmp_path / "empty.pem").write_text("")
    with pytest.raises(ConfigError, match="TLS_CLIENT_CA"):
        server_ssl_context(settings(tls_client_ca=tmp_path / "empty.pem"))
