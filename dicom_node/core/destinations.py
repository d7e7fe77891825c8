"""Report destinations: where reports go, in which output profiles, for which studies.

A destination is one place a report is sent, configured in
``DICOM_NODE_DESTINATIONS`` (a JSON list, or a YAML list in the overlay)::

    [{"name": "pacs", "kind": "c_store", "ae_title": "PACS", "host": "10.0.0.5", "port": 104,
      "profiles": ["tid1500", "key_image"], "storage_commitment": true},
     {"name": "viewer", "kind": "stow_rs", "url": "http://viewer/dicom-web",
      "profiles": ["tid1500"], "rules": [{"calling_aes": ["CT_ER"]}]},
     {"name": "archive", "kind": "outbox", "profiles": ["text_sr", "pdf"]}]

Kinds: ``c_store`` (a C-STORE SCP: ``ae_title``, ``host``, ``port``; optionally
``storage_commitment``, PS3.4 Annex J), ``stow_rs`` (a DICOMweb service's base
URL, PS3.18 10.5), ``outbox`` (a folder: ``directory``, default
``<data_dir>/outbox``). ``profiles`` names the output profiles the destination
takes (``tid1500``, ``text_sr``, ``key_image``, ``pdf``; default TID 1500 only).
``rules`` chooses the studies, in the routing-rule form of the model manifests
(``calling_aes``, ``modalities``, ``study_description``, ``attributes`` ...):
a study goes to the destination when any rule matches its first image (empty:
every study). The rules are checked by ``models.manifest`` (``models/`` owns the
rule language); this module only holds them.

Without ``DICOM_NODE_DESTINATIONS``, the legacy ``DICOM_NODE_PACS``
(``AE@host:port``) is one ``c_store`` destination named ``pacs``; without
either, reports go to the ``outbox`` destination.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dicom_node.core.errors import ConfigError
from dicom_node.core.peer import Peer, validate_ae_title

DestinationKind = Literal["c_store", "stow_rs", "outbox"]
DEFAULT_PROFILES: tuple[str, ...] = ("tid1500",)
"""Profiles of a destination that names none: TID 1500 (IHE AI Results)."""
OUTBOX = "outbox"
PACS = "pacs"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")


class Destination(BaseModel):
    """One place reports go.

    Attributes
    ----------
    name : str
        Its key in the ledger, logs and ``dicom-node exports`` (lower case,
        digits, ``_ . -``; at most 32 characters).
    kind : {"c_store", "stow_rs", "outbox"}
        How reports get there.
    ae_title, host, port : str, str, int
        The C-STORE SCP (``c_store`` only).
    url : str
        DICOMweb base URL; STOW-RS posts to ``<url>/studies`` (``stow_rs`` only).
    directory : Path or None
        Outbox folder (``outbox`` only); None: ``<data_dir>/outbox``.
    profiles : list of str
        Output profiles this destination takes, in sending order.
    rules : list of dict
        Routing rules choosing the studies (empty: all).
    storage_commitment : bool
        ``c_store`` only: ask for Storage Commitment (N-ACTION, PS3.4 J.3) and
        count a report delivered only once the SCP commits it.
    timeout_seconds : float or None
        Network/DIMSE/HTTP timeout of one attempt, seconds; None: the node's
        ``dimse_timeout``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: DestinationKind
    ae_title: str | None = None
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    url: str | None = None
    directory: Path | None = None
    profiles: list[str] = Field(default_factory=lambda: list(DEFAULT_PROFILES), min_length=1)
    rules: list[dict[str, Any]] = Field(default_factory=list)
    storage_commitment: bool = False
    timeout_seconds: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> Destination:
        if not _NAME.match(self.name):
            raise ValueError(
                f"destination name {self.name!r}: lower case letters, digits, '_.-', 1-32 chars"
            )
        if len(set(self.profiles)) != len(self.profiles):
            raise ValueError(f"destination {self.name}: a profile is listed twice")
        if self.kind == "c_store":
            if not (self.ae_title and self.host and self.port):
                raise ValueError(f"destination {self.name}: c_store needs ae_title, host, port")
            validate_ae_title(self.ae_title)
        elif self.storage_commitment:
            raise ValueError(f"destination {self.name}: storage_commitment needs kind c_store")
        if self.kind == "stow_rs" and not (
            self.url and self.url.startswith(("http://", "https://"))
        ):
            raise ValueError(f"destination {self.name}: stow_rs needs an http(s) url")
        return self

    @property
    def peer(self) -> Peer:
        """The C-STORE SCP.

        Raises
        ------
        ConfigError
            If this is not a ``c_store`` destination.
        """
        if self.kind != "c_store" or not (self.ae_title and self.host and self.port):
            raise ConfigError(f"destination {self.name} is not a C-STORE SCP")
        return Peer(self.ae_title, self.host, self.port)

    def describe(self) -> str:
        """``pacs (C-STORE PACS@10.0.0.5:104)``: name and address, for logs and the CLI."""
        if self.kind == "c_store":
            where = f"C-STORE {self.peer}"
        elif self.kind == "stow_rs":
            where = f"STOW-RS {self.url}"
        else:
            where = f"outbox {self.directory or '<data_dir>/outbox'}"
        return f"{self.name} ({where})"


def default_destinations(pacs: str | None) -> list[Destination]:
    """The destinations when ``DICOM_NODE_DESTINATIONS`` is empty.

    Parameters
    ----------
    pacs : str or None
        ``DICOM_NODE_PACS`` (``AE@host:port``).

    Returns
    -------
    list of Destination
        ``[pacs]`` (C-STORE, TID 1500) when ``pacs`` is set, else ``[outbox]``.
    """
    if pacs:
        peer = Peer.parse(pacs)
        return [
            Destination(
                name=PACS, kind="c_store", ae_title=peer.ae_title, host=peer.host, port=peer.port
            )
        ]
    return [Destination(name=OUTBOX, kind="outbox")]


def check_unique(destinations: list[Destination]) -> list[Destination]:
    """Return ``destinations`` after checking that no two share a name.

    Raises
    ------
    ConfigError
        If two destinations have the same name.
    """
    names = [d.name for d in destinations]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"destination names used twice: {', '.join(twice)}")
    return destinations
