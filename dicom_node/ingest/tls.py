"""DICOM TLS for the SCP: PS3.15 Annex B secure transport connection profiles (BCP 195).

The server context follows the BCP 195 based profiles of PS3.15 Annex B
(B.10 "Non-downgrading BCP 195 TLS Secure Transport Connection Profile",
B.12 "BCP 195 RFC 8996 TLS Profile" and B.13 "Modified BCP 195 RFC 8996 TLS
Profile"; RFC 8996 and RFC 9325):

- TLS 1.2 or later only; no SSL, TLS 1.0 or 1.1, no fallback;
- TLS 1.2 cipher suites with forward secrecy and AEAD only (ECDHE or DHE key
  exchange, AES-GCM or ChaCha20-Poly1305); TLS 1.3 uses its own AEAD suites;
- no TLS compression and no renegotiation;
- a server certificate chain and key, and, optionally, verification of client
  certificates against a configured CA bundle.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from dicom_node.core.errors import ConfigError
from dicom_node.core.settings import Settings

BCP195_TLS12_CIPHERS = ":".join(
    [
        # PS3.15 B.12 (RFC 9325 section 4.2 recommended), server preference first
        "ECDHE-ECDSA-AES128-GCM-SHA256",  # TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        "ECDHE-RSA-AES128-GCM-SHA256",  # TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        "ECDHE-ECDSA-AES256-GCM-SHA384",  # TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        "ECDHE-RSA-AES256-GCM-SHA384",  # TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
        # PS3.15 B.13
        "ECDHE-ECDSA-CHACHA20-POLY1305",  # TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        "ECDHE-RSA-CHACHA20-POLY1305",  # TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        # PS3.15 B.10 (usable only where DH parameters are available)
        "DHE-RSA-AES128-GCM-SHA256",  # TLS_DHE_RSA_WITH_AES_128_GCM_SHA256
        "DHE-RSA-AES256-GCM-SHA384",  # TLS_DHE_RSA_WITH_AES_256_GCM_SHA384
    ]
)
"""OpenSSL names of the TLS 1.2 cipher suites the node negotiates (PS3.15 B.10, B.12, B.13)."""


def _readable(path: Path | None, setting: str) -> Path:
    if path is None:
        raise ConfigError(f"DICOM_NODE_{setting} is not set")
    if not path.is_file():
        raise ConfigError(f"DICOM_NODE_{setting}={path}: no such file")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"DICOM_NODE_{setting}={path}: cannot be read ({exc.strerror})") from None
    return path


def server_ssl_context(settings: Settings) -> ssl.SSLContext:
    """Build the SCP's TLS context (PS3.15 Annex B, BCP 195 profiles).

    Parameters
    ----------
    settings : Settings
        ``tls_certificate`` and ``tls_private_key`` (PEM) identify the node;
        ``tls_client_ca`` (PEM bundle) is what client certificates must chain
        to. With ``tls_verify_client`` a client without a valid certificate is
        refused during the handshake; with a CA but without that switch, a
        certificate the client offers must still be valid (PS3.15 B.1: peer
        authentication is a local policy).

    Returns
    -------
    ssl.SSLContext
        A server-side context: TLS 1.2 minimum, BCP 195 cipher suites, no
        compression, no renegotiation.

    Raises
    ------
    ConfigError
        If a file is missing or unreadable, the key does not match the
        certificate, or the CA bundle holds no usable certificate.
    """
    certificate = _readable(settings.tls_certificate, "TLS_CERTIFICATE")
    private_key = _readable(settings.tls_private_key, "TLS_PRIVATE_KEY")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= (
        ssl.OP_NO_COMPRESSION
        | ssl.OP_CIPHER_SERVER_PREFERENCE
        | ssl.OP_NO_RENEGOTIATION
        | ssl.OP_SINGLE_ECDH_USE
        | ssl.OP_SINGLE_DH_USE
    )
    context.set_ciphers(BCP195_TLS12_CIPHERS)
    try:
        context.load_cert_chain(certificate, private_key)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"DICOM_NODE_TLS_CERTIFICATE={certificate} / DICOM_NODE_TLS_PRIVATE_KEY={private_key}: "
            f"not a PEM certificate chain and its matching private key ({exc.reason or exc})"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"DICOM_NODE_TLS_CERTIFICATE={certificate} / DICOM_NODE_TLS_PRIVATE_KEY={private_key}: "
            f"cannot be loaded ({exc.strerror or exc})"
        ) from None
    if settings.tls_client_ca is not None:
        ca = _readable(settings.tls_client_ca, "TLS_CLIENT_CA")
        try:
            context.load_verify_locations(cafile=str(ca))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"DICOM_NODE_TLS_CLIENT_CA={ca}: not a PEM CA bundle ({exc})"
            ) from None
        if not context.get_ca_certs():
            raise ConfigError(f"DICOM_NODE_TLS_CLIENT_CA={ca}: holds no CA certificate")
        context.verify_mode = ssl.CERT_REQUIRED if settings.tls_verify_client else ssl.CERT_OPTIONAL
    elif settings.tls_verify_client:
        raise ConfigError("DICOM_NODE_TLS_VERIFY_CLIENT needs DICOM_NODE_TLS_CLIENT_CA")
    return context
