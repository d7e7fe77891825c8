"""Decode an instance's first frame to stored values, ``(C, H, W) float64``.

Decoding is the implicit first step of every pipeline. It returns *stored*
values (PS3.3 C.7.6.3.1): no Rescale, no Modality or VOI LUT, no inversion;
those are manifest steps. Compressed transfer syntaxes are decoded by pydicom's
plugins: pylibjpeg (-openjpeg for JPEG 2000, -rle for RLE) and python-gdcm
(JPEG, JPEG-LS). YBR_FULL and YBR_FULL_422 colour data are converted to RGB by
pydicom; JPEG 2000 YBR_ICT/YBR_RCT come out of the decoder as RGB.

Before any decoder runs, :func:`check_pixel_module` checks what the Image
Pixel module (PS3.3 C.7.6.3) must say for the frame to be decodable, so that an
image that cannot be used is skipped with a specific reason: a missing or
invalid Rows, Columns, Bits Allocated, Bits Stored, Samples per Pixel or
Pixel Representation, an unsupported Photometric Interpretation, a transfer
syntax without a decoder, or native pixel data shorter than the header says.
Reasons name keywords, tags, sizes and transfer syntax UIDs, never a value
that could be patient data.
"""

from __future__ import annotations

import numpy as np
from pydicom import Dataset
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import UID

from dicom_node.core.errors import PixelDataError
from dicom_node.core.redact import reason_for, shown_value

from .attributes import integer, is_uid, raw_value, text, where
from .types import FloatImage

GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
"""Photometric interpretations decoded to one channel."""

COLOR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
"""Photometric interpretations decoded to three channels, R, G, B."""

BITS_ALLOCATED = (1, 8, 16, 32, 64)
"""Bits Allocated values pydicom can unpack (PS3.5 8.1.1)."""

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_FLOAT_BITS = {"FloatPixelData": 32, "DoubleFloatPixelData": 64}


def photometric(ds: Dataset) -> str:
    """Return the Photometric Interpretation, stripped and upper-case ('' if unusable)."""
    try:
        return text(ds, "PhotometricInterpretation")
    except PixelDataError:
        return ""


def transfer_syntax(ds: Dataset) -> str:
    """Describe the instance's transfer syntax for reasons (UID and name; no patient data)."""
    meta = getattr(ds, "file_meta", None)
    try:
        uid = meta.get("TransferSyntaxUID") if meta is not None else None
    except Exception:  # an undecodable file meta element
        uid = None
    if uid is None:
        return "transfer syntax unknown"
    if not is_uid(str(uid)):
        return "transfer syntax UID invalid"
    name = UID(str(uid)).name
    return f"{uid} {name}".strip() if name and name != str(uid) else str(uid)


def _photometric_checked(ds: Dataset) -> str:
    kind = text(ds, "PhotometricInterpretation")
    if not kind:
        raise PixelDataError(f"{where('PhotometricInterpretation')} is missing")
    if kind not in GRAYSCALE + COLOR:
        shown = shown_value(kind)
        raise PixelDataError(
            f"photometric interpretation {shown or '(invalid value)'} is not supported"
        )
    return kind


def _decoder_checked(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    try:
        uid = meta.get("TransferSyntaxUID") if meta is not None else None
    except Exception:
        uid = None
    if uid is None:
        raise PixelDataError(f"{where('TransferSyntaxUID')} is missing")
    if not is_uid(str(uid)):
        raise PixelDataError(f"{where('TransferSyntaxUID')} is not a valid UID")
    syntax = UID(str(uid))
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise PixelDataError(f"no decoder for transfer syntax {transfer_syntax(ds)}") from None
    if not decoder.is_available:
        raise PixelDataError(f"no decoder plugin installed for {transfer_syntax(ds)}")
    return syntax


def check_pixel_module(ds: Dataset) -> str:
    """Check that the first frame can be decoded; return the photometric interpretation.

    Parameters
    ----------
    ds : pydicom.Dataset
        A complete instance, pixel data included.

    Returns
    -------
    str
        Photometric Interpretation, one of :data:`GRAYSCALE` or :data:`COLOR`.

    Raises
    ------
    PixelDataError
        With a specific reason: unsupported or missing photometric
        interpretation; no pixel data; Rows, Columns, Bits Allocated, Bits
        Stored, Samples per Pixel, Pixel Representation or Number of Frames
        missing, multi-valued or out of range; Samples per Pixel not fitting
        the photometric interpretation; no decoder for the transfer syntax;
        native pixel data shorter than Rows x Columns x Samples x Bits x Frames.
    """
    kind = _photometric_checked(ds)
    keyword = next((k for k in _PIXEL_KEYWORDS if k in ds), None)
    if keyword is None:
        raise PixelDataError("instance has no pixel data (7FE0,0010)")
    rows = integer(ds, "Rows", 1)
    columns = integer(ds, "Columns", 1)
    samples = integer(ds, "SamplesPerPixel", 1, 4)
    if samples != (1 if kind in GRAYSCALE else 3):
        raise PixelDataError(f"{where('SamplesPerPixel')} does not fit {kind}")
    bits = _FLOAT_BITS.get(keyword) or integer(ds, "BitsAllocated", 1, 64)
    if bits not in BITS_ALLOCATED:
        raise PixelDataError(f"{where('BitsAllocated')} {bits} is not supported")
    if keyword == "PixelData":
        integer(ds, "BitsStored", 1, bits)
        integer(ds, "PixelRepresentation", 0, 1)
    frames = integer(ds, "NumberOfFrames", 1) if "NumberOfFrames" in ds else 1
    syntax = _decoder_checked(ds)
    if syntax.is_compressed:
        return kind
    data = raw_value(ds, keyword)
    if data is None:
        raise PixelDataError(f"{where(keyword)} is empty")
    if not isinstance(data, bytes):
        raise PixelDataError(f"{where(keyword)} cannot be read")
    expected = (rows * columns * samples * bits * frames + 7) // 8
    if len(data) < expected:
        raise PixelDataError(
            f"pixel data is truncated: {len(data)} bytes, {expected} expected "
            f"({frames} frame(s) of {rows}x{columns}, {samples} sample(s) of {bits} bits)"
        )
    return kind


def decode_first_frame(ds: Dataset) -> FloatImage:
    """Decode the first frame's stored values.

    Parameters
    ----------
    ds : pydicom.Dataset
        A complete instance, pixel data included.

    Returns
    -------
    ndarray
        ``(1, Rows, Columns) float64`` for MONOCHROME1/2, ``(3, Rows, Columns)
        float64`` (R, G, B) for colour; stored values, exact integers for
        integer pixel data.

    Raises
    ------
    PixelDataError
        For the reasons of :func:`check_pixel_module`, when the decoder
        fails (the exception class, the keywords its text names and the
        transfer syntax, never the decoder's text, which may quote element
        values), or when the decoded
        frame has an unexpected shape.
    """
    kind = check_pixel_module(ds)
    try:
        frame = pixel_array(ds, index=0)
    except Exception as exc:  # any decoder failure; its text may quote element values
        raise PixelDataError(
            f"cannot decode pixel data: {reason_for(exc)} ({transfer_syntax(ds)})"
        ) from exc
    channels = 1 if kind in GRAYSCALE else 3
    if channels == 1 and frame.ndim == 2:
        image = frame[np.newaxis]
    elif channels == 3 and frame.ndim == 3 and frame.shape[-1] == 3:
        image = np.moveaxis(frame, -1, 0)
    else:
        raise PixelDataError(
            f"decoded frame has shape {frame.shape}, expected {channels} channel(s) for {kind}"
        )
    return np.ascontiguousarray(image, dtype=np.float64)
