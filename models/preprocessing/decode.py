"""Decode an instance's first frame to stored values, ``(C, H, W) float64``.

Decoding is the implicit first step of every pipeline. It returns *stored*
values (PS3.3 C.7.6.3.1): no Rescale, no Modality or VOI LUT, no inversion;
those are manifest steps. Compressed transfer syntaxes are decoded by pydicom's
plugins: pylibjpeg (-openjpeg for JPEG 2000, -rle for RLE) and python-gdcm
(JPEG, JPEG-LS). YBR_FULL and YBR_FULL_422 colour data are converted to RGB by
pydicom; JPEG 2000 YBR_ICT/YBR_RCT come out of the decoder as RGB.
"""

from __future__ import annotations

import numpy as np
from pydicom import Dataset
from pydicom.pixels import pixel_array

from dicom_node.core.errors import PixelDataError

from .types import FloatImage

GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
"""Photometric interpretations decoded to one channel."""

COLOR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
"""Photometric interpretations decoded to three channels, R, G, B."""

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def photometric(ds: Dataset) -> str:
    """Return the instance's Photometric Interpretation, stripped and upper-case ('' if absent)."""
    return str(ds.get("PhotometricInterpretation", "") or "").strip().upper()


def transfer_syntax(ds: Dataset) -> str:
    """Describe the instance's transfer syntax for error texts (UID and name; no patient data)."""
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid is None:
        return "transfer syntax unknown"
    name = getattr(uid, "name", "")
    return f"{uid} {name}".strip() if name and name != str(uid) else str(uid)


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
        If there is no pixel data, the photometric interpretation is not
        supported (e.g. PALETTE COLOR), no plugin can decode the transfer
        syntax, or the decoded frame has an unexpected shape. Messages give
        the exception class and the transfer syntax, never decoder texts
        (which may quote element values).
    """
    kind = photometric(ds)
    if kind not in GRAYSCALE + COLOR:
        raise PixelDataError(f"photometric interpretation {kind or '(none)'} is not supported")
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise PixelDataError("instance has no pixel data (7FE0,0010)")
    try:
        frame = pixel_array(ds, index=0)
    except Exception as exc:  # any decoder failure; its text may quote element values
        raise PixelDataError(
            f"cannot decode pixel data: {type(exc).__name__} ({transfer_syntax(ds)})"
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
