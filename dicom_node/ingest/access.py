"""Who may associate: the calling AE allowlist (optionally per host) and our called AE title.

Checked when the A-ASSOCIATE-RQ arrives (``EVT_REQUESTED``), before any
presentation context is negotiated. An unknown peer gets an A-ASSOCIATE-RJ
with the result, source and reason of PS3.8 section 9.3.4 (Table 9-21):

======================================  ======  ======  ======
case                                    result  source  reason
======================================  ======  ======  ======
calling AE title not on the allowlist   1       1       3
calling AE title from another host      1       1       3
called AE title is not ours             1       1       7
======================================  ======  ======  ======

(result 1: rejected-permanent; source 1: DICOM UL service-user.) Each
rejection is logged as one WARNING line naming the calling and called AE
titles, the peer address and the reason; nothing else of the request.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pynetdicom import evt

from dicom_node.core.errors import ConfigError
from dicom_node.core.settings import Settings

log = logging.getLogger(__name__)

REJECTED_PERMANENT = 0x01
"""A-ASSOCIATE-RJ Result: rejected-permanent (PS3.8 Table 9-21)."""
SOURCE_SERVICE_USER = 0x01
"""A-ASSOCIATE-RJ Source: DICOM UL service-user (PS3.8 Table 9-21)."""
REASON_CALLING_AE_NOT_RECOGNIZED = 0x03
"""A-ASSOCIATE-RJ Reason/Diag., source 1: calling-AE-title-not-recognized."""
REASON_CALLING_AE_WRONG_HOST = REASON_CALLING_AE_NOT_RECOGNIZED
"""PS3.8 has no reason for "known AE, wrong host": it is answered as not recognized."""
REASON_CALLED_AE_NOT_RECOGNIZED = 0x07
"""A-ASSOCIATE-RJ Reason/Diag., source 1: called-AE-title-not-recognized."""

Resolver = Callable[[str], Sequence[str]]


def resolve_host(host: str) -> list[str]:
    """IP addresses of ``host`` (an IP address or a host name), via :func:`socket.getaddrinfo`.

    Raises
    ------
    ConfigError
        If the name does not resolve.
    """
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(
            f"DICOM_NODE_CALLING_AES: host {host!r} does not resolve ({exc})"
        ) from None
    return sorted({str(info[4][0]) for info in infos})


def _normalise(address: str) -> str:
    """Canonical text of an IP address; IPv4-mapped IPv6 addresses become IPv4."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


@dataclass(frozen=True)
class Rejection:
    """Why an association request is refused, as sent in the A-ASSOCIATE-RJ.

    Attributes
    ----------
    result, source, reason : int
        A-ASSOCIATE-RJ fields (PS3.8 Table 9-21).
    text : str
        The reason in words, for the log.
    """

    result: int
    source: int
    reason: int
    text: str


class AccessPolicy:
    """The calling AE allowlist (each entry optionally bound to a host) and called AE check.

    Host names are resolved once, here, so that a slow or poisoned DNS cannot
    stall or change an association's admission later.

    Parameters
    ----------
    settings : Settings
        ``calling_ae_allowlist`` (empty: any calling AE), ``require_called_ae``
        and ``ae_title``.
    resolve : callable, optional
        Host name to IP addresses; defaults to :func:`resolve_host`.

    Raises
    ------
    ConfigError
        If an allowlist entry is invalid or its host does not resolve.
    """

    def __init__(self, settings: Settings, resolve: Resolver = resolve_host) -> None:
        self.ae_title = settings.ae_title
        self.require_called_ae = settings.require_called_ae
        self._any_host: set[str] = set()
        self._hosts: dict[str, set[str]] = {}
        for ae, host in settings.calling_ae_allowlist:
            if host is None:
                self._any_host.add(ae)
            else:
                self._hosts.setdefault(ae, set()).update(_normalise(a) for a in resolve(host))
        self.restricted = bool(self._any_host or self._hosts)

    @property
    def active(self) -> bool:
        """Whether anything is checked at all."""
        return self.restricted or self.require_called_ae

    def check(self, calling_ae: str, called_ae: str, peer_address: str) -> Rejection | None:
        """Decide on an association request.

        Parameters
        ----------
        calling_ae, called_ae : str
            AE titles from the A-ASSOCIATE-RQ (surrounding spaces are not significant).
        peer_address : str
            The peer's IP address.

        Returns
        -------
        Rejection or None
            None to let negotiation go on.
        """
        calling, called = calling_ae.strip(), called_ae.strip()
        if self.require_called_ae and called != self.ae_title:
            return Rejection(
                REJECTED_PERMANENT,
                SOURCE_SERVICE_USER,
                REASON_CALLED_AE_NOT_RECOGNIZED,
                "called AE title not recognized",
            )
        if not self.restricted or calling in self._any_host:
            return None
        hosts = self._hosts.get(calling)
        if hosts is None:
            return Rejection(
                REJECTED_PERMANENT,
                SOURCE_SERVICE_USER,
                REASON_CALLING_AE_NOT_RECOGNIZED,
                "calling AE title not recognized",
            )
        if _normalise(peer_address) not in hosts:
            return Rejection(
                REJECTED_PERMANENT,
                SOURCE_SERVICE_USER,
                REASON_CALLING_AE_WRONG_HOST,
                "calling AE title not allowed from this host",
            )
        return None

    def on_requested(self, event: evt.Event) -> None:
        """``EVT_REQUESTED`` handler: send the A-ASSOCIATE-RJ for an unknown peer.

        :meth:`pynetdicom.acse.ACSE.send_reject` marks the association
        rejected, so pynetdicom does not negotiate it further; we then wait, as
        pynetdicom does for its own rejections, until the upper layer has sent
        the A-ASSOCIATE-RJ and the connection is closed (by the peer, or by the
        ARTIM timer, PS3.8 section 9.1.5).
        """
        assoc = event.assoc
        rq = assoc.requestor.primitive
        if rq is None:  # pragma: no cover - EVT_REQUESTED always carries the request
            return
        calling = str(rq.calling_ae_title)
        called = str(rq.called_ae_title)
        peer = str(assoc.requestor.address)
        rejection = self.check(calling, called, peer)
        if rejection is None:
            return
        log.warning(
            "association rejected: calling AE %r, called AE %r, peer %s: %s "
            "(A-ASSOCIATE-RJ result %d, source %d, reason %d)",
            calling.strip(),
            called.strip(),
            peer,
            rejection.text,
            rejection.result,
            rejection.source,
            rejection.reason,
        )
        assoc.acse.send_reject(rejection.result, rejection.source, rejection.reason)
        assoc.is_rejected = True  # send_reject sets it; the reactor checks it
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()


def access_handlers(settings: Settings) -> list[Any]:
    """Event handlers that reject unknown peers at association time.

    Parameters
    ----------
    settings : Settings
        See :class:`AccessPolicy`.

    Returns
    -------
    list
        ``[(evt.EVT_REQUESTED, handler)]``, or an empty list when neither a
        calling AE allowlist nor the called AE check is configured.

    Raises
    ------
    ConfigError
        If an allowlist entry is invalid or its host does not resolve.
    """
    policy = AccessPolicy(settings)
    if not policy.active:
        return []
    return [(evt.EVT_REQUESTED, policy.on_requested)]
