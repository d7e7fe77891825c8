"""DIMSE status codes this node returns, with their PS3.4 / PS3.7 references.

Handlers return these codes; they never let an exception reach pynetdicom.
"""

from __future__ import annotations

from typing import Final

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

NAMES: Final[dict[int, str]] = {
    SUCCESS: "Success",
    OUT_OF_RESOURCES: "Refused: Out of Resources",
    DATASET_DOES_NOT_MATCH_SOP_CLASS: "Error: Data Set does not match SOP Class",
    CANNOT_UNDERSTAND: "Error: Cannot understand",
    PROCESSING_FAILURE: "Failure: Processing failure",
    NOT_AUTHORIZED: "Refused: Not authorized",
    COERCION_OF_DATA_ELEMENTS: "Warning: Coercion of Data Elements",
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
