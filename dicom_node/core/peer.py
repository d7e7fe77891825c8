"""A remote DICOM application entity (``AE@host:port``) and AE title validation (PS3.5 6.2)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from dicom_node.core.errors import ConfigError

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 6.2: AE, no backslash
_PEER_RE = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>\[[^\]]+\]|[^:@]+):(?P<port>\d{1,5})$")


def validate_ae_title(value: str) -> str:
    """Check an AE title against PS3.5 section 6.2 (AE value representation).

    Parameters
    ----------
    value : str
        Candidate AE title.

    Returns
    -------
    str
        The AE title with surrounding spaces removed.

    Raises
    ------
    ConfigError
        If it is empty, longer than 16 characters, or holds control characters or a backslash.
    """
    stripped = value.strip()
    if not stripped or not _AE_RE.match(stripped):
        raise ConfigError(f"invalid AE title {value!r}: 1-16 printable characters, no backslash")
    return stripped


@dataclass(frozen=True)
class Peer:
    """A remote DICOM application entity.

    Attributes
    ----------
    ae_title : str
        Called AE title of the peer.
    host : str
        Host name or IP address.
    port : int
        TCP port.
    """

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Peer:
        """Parse ``AE@host:port``.

        Raises
        ------
        ConfigError
            If the text is not of that form or a part is invalid.
        """
        match = _PEER_RE.match(text.strip())
        if match is None:
            raise ConfigError(f"invalid peer {text!r}: expected AE@host:port")
        port = int(match["port"])
        if not 0 < port < 65536:
            raise ConfigError(f"invalid port in {text!r}")
        return cls(validate_ae_title(match["ae"]), match["host"].strip("[]"), port)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"
