"""Crop and pad steps on ``(C, H, W)`` images."""

from __future__ import annotations

import numpy as np
from pydicom import Dataset

from dicom_node.core.errors import PixelDataError

from .params import StepParams
from .types import FloatImage, Step

OFFSETS = ("xrv", "torchvision")


def crop_origin(height: int, width: int, crop: tuple[int, int], offsets: str) -> tuple[int, int]:
    """Return ``(top, left)`` of a centred ``crop = (h, w)`` in an ``height x width`` image.

    ``xrv`` (torchxrayvision ``XRayCenterCrop.crop_center``): ``H // 2 - h // 2``.
    ``torchvision`` (``transforms.functional.center_crop``):
    ``int(round((H - h) / 2))``, Python's round-half-to-even. They differ by
    one pixel when ``H - h`` is odd.
    """
    h, w = crop
    if offsets == "xrv":
        return height // 2 - h // 2, width // 2 - w // 2
    return round((height - h) / 2.0), round((width - w) / 2.0)


def center_crop(
    image: FloatImage, size: tuple[int, int] | None = None, offsets: str = "xrv"
) -> FloatImage:
    """Crop a centred ``size`` (default: the largest centred square).

    Parameters
    ----------
    image : ndarray
        ``(C, H, W)``.
    size : (int, int) or None
        ``(h, w)``; None crops ``min(H, W)`` square.
    offsets : {"xrv", "torchvision"}
        Rounding of the origin, see :func:`crop_origin`.

    Returns
    -------
    ndarray
        ``(C, h, w)``, a view of ``image``.

    Raises
    ------
    PixelDataError
        If ``size`` is larger than the image.
    """
    _, height, width = image.shape
    crop = size or (min(height, width), min(height, width))
    if crop[0] > height or crop[1] > width:
        raise PixelDataError(f"center_crop {list(crop)} is larger than the image {height}x{width}")
    top, left = crop_origin(height, width, crop, offsets)
    return image[:, top : top + crop[0], left : left + crop[1]]


def pad_square(image: FloatImage, value: float = 0.0, align: str = "center") -> FloatImage:
    """Pad the short side with ``value`` to a square.

    Parameters
    ----------
    image : ndarray
        ``(C, H, W)``.
    value : float
        Fill value, in the image's current units.
    align : {"center", "start"}
        ``center``: padding split before/after (the extra pixel after);
        ``start``: the image stays at the top-left, padding after.

    Returns
    -------
    ndarray
        ``(C, S, S)`` with ``S = max(H, W)``.
    """
    _, height, width = image.shape
    side = max(height, width)
    pads = []
    for extent in (height, width):
        missing = side - extent
        before = missing // 2 if align == "center" else 0
        pads.append((before, missing - before))
    return np.pad(image, ((0, 0), pads[0], pads[1]), mode="constant", constant_values=value)


def make_center_crop(params: StepParams) -> Step:
    """``center_crop``: ``size`` (N or [H, W]; default: the largest square), ``offsets``."""
    size = params.optional_size("size")
    offsets = params.choice("offsets", OFFSETS, "xrv")

    def center_crop_step(image: FloatImage, ds: Dataset) -> FloatImage:
        return center_crop(image, size, offsets)

    return center_crop_step


def make_pad_square(params: StepParams) -> Step:
    """``pad_square``: parameters ``value`` (default 0) and ``align`` (center | start)."""
    value = params.number("value", 0.0)
    align = params.choice("align", ("center", "start"), "center")

    def pad_square_step(image: FloatImage, ds: Dataset) -> FloatImage:
        return pad_square(image, value, align)

    return pad_square_step
