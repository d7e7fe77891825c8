"""Pixel data to a display-ready image: decode, Modality LUT, VOI LUT, MONOCHROME1 inversion.

Compressed transfer syntaxes are decoded by pydicom's plugins: pylibjpeg
(-openjpeg for JPEG 2000, -rle for RLE) and python-gdcm (JPEG, JPEG-LS).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from dicom_node.core.errors import PixelDataError


def _voi_output_range(ds: Dataset) -> tuple[float, float] | None:
    """Lowest and highest values the first VOI transform can output, or None if there is none."""
    if "VOILUTSequence" not in ds and "WindowCenter" not in ds:
        return None
    extremes = apply_voi_lut(np.array([[-1e12, 1e12]], dtype=np.float64), ds, index=0)
    low, high = float(np.min(extremes)), float(np.max(extremes))
    return (low, high) if high > low else None


def display_image(ds: Dataset) -> npt.NDArray[np.float32]:
    """Decode an instance's first frame and map it to [0, 1], bright = dense.

    Steps (PS3.3 C.11 and C.7.6.3.1.2): Modality LUT (or rescale), then the first
    VOI LUT or window; the VOI output range (else the image's own range) is
    scaled to [0, 1]; MONOCHROME1 is inverted so the result is MONOCHROME2.
    Equivalent to torchxrayvision's ``read_xray_dcm`` followed by division
    by its ``2**BitsStored - 1`` bound.

    Parameters
    ----------
    ds : pydicom.Dataset
        A complete instance, pixel data included.

    Returns
    -------
    ndarray
        ``(Rows, Columns) float32`` in [0, 1].

    Raises
    ------
    PixelDataError
        If pixel data cannot be decoded, is not single-channel, or is constant.
    """
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise PixelDataError(f"photometric interpretation {photometric or '(none)'} not supported")
    if "PixelData" not in ds:
        raise PixelDataError("instance has no Pixel Data (7FE0,0010)")
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID", "?") if hasattr(ds, "file_meta") else "?"
        raise PixelDataError(f"cannot decode pixel data ({syntax}): {exc}") from exc
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    if pixels.ndim != 2:
        raise PixelDataError(f"expected one grayscale frame, got shape {pixels.shape}")
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    voi_range = _voi_output_range(ds)
    if voi_range is not None:
        values = np.asarray(apply_voi_lut(values, ds, index=0, prefer_lut=True), dtype=np.float64)
        low, high = voi_range
    else:
        low, high = float(values.min()), float(values.max())
    if high <= low:
        raise PixelDataError("pixel data is constant")
    image = np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)
    if photometric == "MONOCHROME1":
        image = 1.0 - image
    return image
