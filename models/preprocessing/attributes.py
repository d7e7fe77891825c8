"""Header values the preprocessing reads, checked, with reasons that name keywords only.

Headers come from other people's machines: an attribute may be missing,
multi-valued where it must have one value, of the wrong VR, or undecodable.
Each reader here either returns a usable value or raises
:class:`~dicom_node.core.errors.PixelDataError` naming the keyword and tag
(``"WindowCenter (0028,1050) is not a number"``), never the value, so that the
image is skipped with that reason and the text can go to logs and the ledger.
"""

from __future__ import annotations

import math
import re
from typing import Any

from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.multival import MultiValue

from dicom_node.core.errors import PixelDataError

_MISSING: Any = object()


def where(keyword: str) -> str:
    """``"Rows (0028,0010)"``: a keyword and its tag, for reasons."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        return keyword
    return f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


def raw_value(ds: Dataset, keyword: str) -> Any:
    """The value of an attribute, None when absent or empty.

    Raises
    ------
    PixelDataError
        If pydicom cannot convert the stored bytes (wrong length for the VR,
        text in a number, an undecodable character).
    """
    try:
        if keyword not in ds:
            return None
        value = ds[keyword].value
    except Exception as exc:  # pydicom's conversion texts quote the value
        raise PixelDataError(f"{where(keyword)} cannot be read ({type(exc).__name__})") from exc
    if value is None or (isinstance(value, str | bytes | list | MultiValue) and len(value) == 0):
        return None
    return value


def integer(ds: Dataset, keyword: str, minimum: int = 0, maximum: int | None = None) -> int:
    """A required single-valued integer attribute within ``[minimum, maximum]``.

    The value must be an integer as pydicom reads it (US, SS, UL, SL, IS): a number
    written as text in another VR is refused, since pydicom's decoders would fail on it.

    Raises
    ------
    PixelDataError
        ``"<keyword> (gggg,eeee) is missing"``, ``"... is empty"``, ``"... has more than
        one value"``, ``"... is not an integer"`` or ``"... is out of range"``.
    """
    value = raw_value(ds, keyword)
    if value is None:
        raise PixelDataError(f"{where(keyword)} is {'empty' if keyword in ds else 'missing'}")
    if isinstance(value, list | MultiValue):
        raise PixelDataError(f"{where(keyword)} has more than one value")
    if isinstance(value, bool) or not isinstance(value, int):  # text or a float: a wrong VR
        raise PixelDataError(f"{where(keyword)} is not an integer")
    if value < minimum or (maximum is not None and value > maximum):
        raise PixelDataError(f"{where(keyword)} is out of range")
    return int(value)


def numbers(ds: Dataset, keyword: str) -> list[float] | None:
    """An optional numeric attribute (DS, IS, US, FD ...) as finite floats; None when absent.

    Values must be numbers as pydicom reads them: a number written as text in
    another VR (CS, LO ...) is refused, since pydicom's LUT functions would fail on it.

    Raises
    ------
    PixelDataError
        ``"<keyword> (gggg,eeee) is not a number"`` when a value cannot be read as
        a finite number.
    """
    value = raw_value(ds, keyword)
    if value is None:
        return None
    items = list(value) if isinstance(value, list | MultiValue) else [value]
    out: list[float] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | float):  # text: a wrong VR
            raise PixelDataError(f"{where(keyword)} is not a number")
        try:
            number = float(item)
        except OverflowError:
            raise PixelDataError(f"{where(keyword)} is not a finite number") from None
        if not math.isfinite(number):
            raise PixelDataError(f"{where(keyword)} is not a finite number")
        out.append(number)
    return out


def single_number(ds: Dataset, keyword: str) -> float | None:
    """An optional single-valued numeric attribute; None when absent.

    Raises
    ------
    PixelDataError
        If it is not a finite number or has more than one value.
    """
    values = numbers(ds, keyword)
    if values is None:
        return None
    if len(values) != 1:
        raise PixelDataError(f"{where(keyword)} has more than one value")
    return values[0]


def text(ds: Dataset, keyword: str) -> str:
    """A single-valued text attribute, stripped and upper-case; ``""`` when absent.

    Raises
    ------
    PixelDataError
        If it cannot be read, has more than one value or is not text.
    """
    value = raw_value(ds, keyword)
    if value is None:
        return ""
    if isinstance(value, list | MultiValue):
        raise PixelDataError(f"{where(keyword)} has more than one value")
    if not isinstance(value, str):
        raise PixelDataError(f"{where(keyword)} is not text")
    return value.strip(" \x00").upper()


_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_uid(value: object) -> bool:
    """Whether a value is a valid UID (PS3.5 9.1): digits and dots, at most 64 characters.

    Checked here rather than with ``pydicom.uid.UID.is_valid``, which warns
    quoting the value.
    """
    return isinstance(value, str) and len(value) <= 64 and _UID.fullmatch(value) is not None
