"""The C-ECHO SCP handler (Verification Service Class, PS3.4 Annex A)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from dicom_node.core import dimse

if TYPE_CHECKING:
    from pynetdicom.events import Event

log = logging.getLogger(__name__)


def handle_echo(event: Event) -> int:
    """Answer C-ECHO with Success (PS3.7 9.1.5)."""
    log.info("C-ECHO from %s", event.assoc.requestor.ae_title)
    return dimse.SUCCESS
