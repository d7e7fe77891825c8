"""Destination: the outbox directory, used when no PACS is configured."""

from __future__ import annotations

import logging
from pathlib import Path

from dicom_node.core.durable import write_durably

log = logging.getLogger(__name__)


def to_outbox(path: Path, outbox: Path) -> Path:
    """Copy a report into the outbox directory durably (no PACS configured).

    Returns
    -------
    Path
        The outbox file.
    """
    target = write_durably(outbox / path.name, path.read_bytes())
    log.info("wrote SR %s to the outbox", path.stem)
    return target
