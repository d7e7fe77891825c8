"""DIMSE status codes this node returns, with their PS3.4 / PS3.7 references.

Handlers return these codes; they never let an exception reach pynetdicom.
"""

from __future__ import annotations

from typing import Final, Literal

SUCCESS: Final = 0x0000
"""Success. PS3.7 C.1.1; PS3.4 Table B.2-1."""

OUT_OF_RESOURCES: Final = 0xA700
"""Refused: Out of Resources (disk full, ledger unavailable). PS3.4 Table B.2-1."""

DATASET_DOES_NOT_MATCH_SOP_CLASS: Final = 0xA900
"""Error: Data Set does not match SOP Class. PS3.4 Table B.2-1."""

CANNOT_UNDERSTAND: Final = 0xC000
"""Error: Cannot understand (undecodable or missing identifying attributes). PS3.4 Table B.2-1."""

PROCESSING_FAILURE: Final = 0x0110
"""Failure: Processing failure (unexpected internal error). PS3.7 C.4.2."""

NOT_AUTHORIZED: Final = 0x0124
"""Refused: Not authorized (calling AE not allowed). PS3.7 C.4.2; reserved for the allowlist."""

COERCION_OF_DATA_ELEMENTS: Final = 0xB000
"""Warning: Coercion of Data Elements. PS3.4 Table B.2-1."""

ELEMENTS_DISCARDED: Final = 0xB006
"""Warning: Elements Discarded. PS3.4 Table B.2-1."""

DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING: Final = 0xB007
"""Warning: Data Set does not match SOP Class. PS3.4 Table B.2-1."""

SOP_CLASS_NOT_SUPPORTED: Final = 0x0122
"""Refused: SOP Class not supported. PS3.7 C.4.2."""

NAMES: Final[dict[int, str]] = {
    SUCCESS: "Success",
    OUT_OF_RESOURCES: "Refused: Out of Resources",
    DATASET_DOES_NOT_MATCH_SOP_CLASS: "Error: Data Set does not match SOP Class",
    CANNOT_UNDERSTAND: "Error: Cannot understand",
    PROCESSING_FAILURE: "Failure: Processing failure",
    NOT_AUTHORIZED: "Refused: Not authorized",
    COERCION_OF_DATA_ELEMENTS: "Warning: Coercion of Data Elements",
    ELEMENTS_DISCARDED: "Warning: Elements Discarded",
    DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING: "Warning: Data Set does not match SOP Class",
    SOP_CLASS_NOT_SUPPORTED: "Refused: SOP Class not supported",
}


def is_success_or_warning(status: int) -> bool:
    """Tell whether a C-STORE response status means the peer kept the instance.

    Parameters
    ----------
    status : int
        DIMSE Status (0000,0900).

    Returns
    -------
    bool
        True for Success (0x0000) and Warning (0x0001, 0x0107, 0x0116, 0xBxxx). PS3.7 C.
    """
    return status == SUCCESS or status in (0x0001, 0x0107, 0x0116) or (status & 0xF000) == 0xB000


Verdict = Literal["delivered", "warning", "retry", "dead"]
"""What a C-STORE (or STOW-RS) status means for a delivery."""


def delivery_verdict(status: int) -> Verdict:
    """Classify a storage response status for the ``deliver`` task.

    Parameters
    ----------
    status : int
        DIMSE Status (0000,0900) of a C-STORE response, or the status a
        STOW-RS answer maps to (PS3.18 Table 10.5.3-1 Failure Reason).

    Returns
    -------
    {"delivered", "warning", "retry", "dead"}
        ``delivered``: Success. ``warning``: a Warning (0xB000 coercion, 0xB006
        elements discarded, 0xB007 data set does not match SOP class, 0x0001,
        0x0107, 0x0116): the peer kept the instance; delivered, warning recorded.
        ``retry``: Refused, Out of Resources (0xA7xx): try again later.
        ``dead``: every other failure (0xA9xx, 0xCxxx, 0x01xx, 0x02xx...): an
        error a retry will not fix; the delivery goes to the dead letter.
        PS3.4 Table B.2-1; PS3.7 Annex C.
    """
    if status == SUCCESS:
        return "delivered"
    if is_success_or_warning(status):
        return "warning"
    if (status & 0xFF00) == 0xA700:
        return "retry"
    return "dead"


def status_text(status: int) -> str:
    """``0xA700 (Refused: Out of Resources)``; the name only when we know it."""
    name = NAMES.get(status)
    return f"0x{status:04X} ({name})" if name else f"0x{status:04X}"
