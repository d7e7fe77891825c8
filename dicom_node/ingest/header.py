"""Read and check the few attributes the SCP needs from a received file.

The C-STORE handler never decodes pixel data. It reads the identifying UIDs and
Manufacturer, checks that the data set is whole (its last element ends where
the file ends), validates each UID that becomes a path or a row (PS3.5 9.1),
and classifies the instance for the loop guard. Errors name attribute
keywords, never values: a value may be PHI.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.filereader import data_element_generator
from pydicom.uid import UID, UID_dictionary

from dicom_node.core.contract import MANUFACTURER
from dicom_node.core.errors import InvalidInstanceError
from dicom_node.core.ledger import InstanceRole

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DELIMITERS = (  # (FFFE,E0DD) with length 0, little and big endian
    b"\xfe\xff\xdd\xe0\x00\x00\x00\x00",
    b"\xff\xfe\xe0\xdd\x00\x00\x00\x00",
)
_UNDEFINED = 0xFFFFFFFF
_DEFER = 256  # bytes: longer values are skipped, not read
_PREAMBLE_AND_MAGIC = 132  # 128-byte preamble + b"DICM" (PS3.10 7.1)
_GROUP_LENGTH_ELEMENT = 12  # (0002,0000) UL, explicit VR little endian


def is_valid_uid(value: str) -> bool:
    """Whether ``value`` is a DICOM UID: digits and dots, no empty component, ≤ 64 chars.

    Source: PS3.5 section 9.1. Leading zeros in a component, which the standard
    forbids but some modalities send, are tolerated.
    """
    return len(value) <= 64 and bool(_UID_RE.match(value))


def is_image_storage(sop_class_uid: str) -> bool:
    """Whether a SOP Class stores images (its PS3.6 name says "Image Storage").

    SR, KOS, presentation states, segmentations, RT objects, waveforms and
    encapsulated documents are not images: they are stored but never analysed.
    Unknown (private) SOP Classes are treated as non-images.
    """
    entry = UID_dictionary.get(sop_class_uid)
    return entry is not None and "Image Storage" in entry[0]


@dataclass(frozen=True)
class ReceivedHeader:
    """What the SCP reads from a received instance.

    Attributes
    ----------
    study_uid, sop_instance_uid, sop_class_uid : str
        Validated UIDs.
    series_uid : str or None
        Series Instance UID, None when absent or malformed.
    manufacturer : str
        Manufacturer (0008,0070), empty when absent.
    """

    study_uid: str
    series_uid: str | None
    sop_instance_uid: str
    sop_class_uid: str
    manufacturer: str

    @property
    def is_image(self) -> bool:
        """Whether its SOP Class stores images (:func:`is_image_storage`)."""
        return is_image_storage(self.sop_class_uid)

    def role(self, produced_here: bool) -> InstanceRole:
        """The instance's role for the loop guard.

        Parameters
        ----------
        produced_here : bool
            Whether the ledger lists this SOP Instance UID as one of our reports.
        """
        if produced_here or self.manufacturer == MANUFACTURER:
            return InstanceRole.OWN_OUTPUT
        if not is_image_storage(self.sop_class_uid):
            return InstanceRole.NON_IMAGE
        return InstanceRole.IMAGE


def _text(value: object) -> str:
    return str(value).rstrip("\x00 ").strip() if value is not None else ""


_WANTED = {
    0x0020000D: "StudyInstanceUID",
    0x0020000E: "SeriesInstanceUID",
    0x00080018: "SOPInstanceUID",
    0x00080016: "SOPClassUID",
    0x00080070: "Manufacturer",
}
_PIXEL_DATA = 0x7FE00010
_META_START = _PREAMBLE_AND_MAGIC + _GROUP_LENGTH_ELEMENT
_GROUP_LENGTH_TAG = b"\x02\x00\x00\x00UL\x04\x00"


def _decode(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("latin-1")
    return _text(value)


def _is_undefined(element: Any) -> bool:
    return bool(
        getattr(element, "length", None) == _UNDEFINED
        or getattr(element, "is_undefined_length", False)
    )


def _scan(path: Path, size: int) -> dict[str, str] | None:
    """One pass over the element headers: the wanted values, and a completeness check.

    Returns None when the file has no File Meta group length or is deflated
    (element positions refer to the inflated stream): the caller falls back to
    :func:`pydicom.dcmread`.

    Raises
    ------
    InvalidInstanceError
        If the last top-level element does not end exactly at the end of the file.
    """
    values: dict[str, str] = {}
    with path.open("rb") as fp:
        head = fp.read(_META_START)
        if head[128:132] != b"DICM" or head[132:140] != _GROUP_LENGTH_TAG:
            return None
        meta = {
            int(e.tag): e.value
            for e in data_element_generator(
                BytesIO(fp.read(int.from_bytes(head[140:144], "little"))), False, True
            )
        }
        syntax = UID(_decode(meta.get(0x00020010, b"")))
        if not syntax.is_transfer_syntax or syntax.is_deflated:
            return None
        last: Any = None
        for last in data_element_generator(
            fp, syntax.is_implicit_VR, syntax.is_little_endian, defer_size=_DEFER
        ):
            name = _WANTED.get(int(last.tag))
            if name is not None and last.value is not None:
                values[name] = _decode(last.value)
            elif int(last.tag) == _PIXEL_DATA and _is_undefined(last) != syntax.is_encapsulated:
                # PS3.5 A.4: encapsulated pixel data has undefined length, native does not
                raise InvalidInstanceError(
                    "PixelData encoding does not match the transfer syntax (PS3.5 A.4)"
                )
        if last is None:
            raise InvalidInstanceError("empty data set")
        if _is_undefined(last):  # encapsulated pixel data or a sequence: ends with a delimiter
            fp.seek(max(size - 8, 0))
            if fp.read() not in _DELIMITERS:
                raise InvalidInstanceError(f"data set truncated in element {last.tag}")
            return values
    if last.value_tell + last.length != size:
        raise InvalidInstanceError(f"data set truncated in element {last.tag}")
    return values


def _read_with_pydicom(path: Path) -> dict[str, str]:
    ds = dcmread(path, defer_size=_DEFER, stop_before_pixels=True)
    return {name: _text(ds.get(name)) for name in _WANTED.values()}


def read_header(path: Path) -> ReceivedHeader:
    """Read and check a received Part 10 file.

    One pass over the element headers (values longer than 256 bytes, pixel
    data included, are skipped, not read) collects the identifying UIDs and
    Manufacturer and checks that the last element ends where the file ends,
    so a data set cut short (inside its Study Instance UID, say) is refused.

    Parameters
    ----------
    path : Path
        The file pynetdicom wrote (File Meta Information + data set as received).

    Returns
    -------
    ReceivedHeader

    Raises
    ------
    InvalidInstanceError
        If the file cannot be parsed, is truncated, or StudyInstanceUID,
        SOPInstanceUID or SOPClassUID is missing or not a valid UID. The
        message names the attribute keyword only.
    """
    try:
        values = _scan(path, os.path.getsize(path))
        if values is None:
            values = _read_with_pydicom(path)
    except InvalidInstanceError:
        raise
    except Exception as exc:  # pydicom raises many types on malformed input
        raise InvalidInstanceError(
            f"data set cannot be decoded ({exc.__class__.__name__})"
        ) from None
    for keyword in ("StudyInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not values.get(keyword):
            raise InvalidInstanceError(f"{keyword} is missing")
        if not is_valid_uid(values[keyword]):
            raise InvalidInstanceError(f"{keyword} is not a valid UID (PS3.5 9.1)")
    series = values.get("SeriesInstanceUID", "")
    return ReceivedHeader(
        study_uid=values["StudyInstanceUID"],
        series_uid=series if series and is_valid_uid(series) else None,
        sop_instance_uid=values["SOPInstanceUID"],
        sop_class_uid=values["SOPClassUID"],
        manufacturer=values.get("Manufacturer", ""),
    )


def quiet_pydicom_reading(mode: int | None = None) -> int:
    """Stop pydicom from validating values on read: its warnings quote the values (PHI).

    Parameters
    ----------
    mode : int, optional
        The pydicom validation mode to set instead of ``IGNORE`` (to restore one).

    Returns
    -------
    int
        The mode that was in force before (process-wide), for restoring it.
    """
    previous = int(pydicom_config.settings.reading_validation_mode)
    pydicom_config.settings.reading_validation_mode = (
        pydicom_config.IGNORE if mode is None else mode
    )
    return previous
