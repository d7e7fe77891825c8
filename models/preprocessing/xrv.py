"""Preprocessing as torchxrayvision defines it, for models whose manifest says ``xrv``.

Source: torchxrayvision ``datasets.normalize``, ``XRayCenterCrop`` and
``models.fix_resolution`` (bilinear resize with antialiasing).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812

XRV_HALF_RANGE = 1024.0


def xrv_normalize(img: npt.ArrayLike, maxval: float) -> npt.NDArray[np.float32]:
    """Scale ``[0, maxval]`` to ``[-1024, 1024]``: ``(2 * img / maxval - 1) * 1024``.

    Parameters
    ----------
    img : array_like
        Pixel values in ``[0, maxval]``, any shape.
    maxval : float
        The value that maps to +1024.

    Returns
    -------
    ndarray
        float32, same shape.

    Raises
    ------
    ValueError
        If ``img`` exceeds ``maxval`` (as torchxrayvision does).
    """
    arr = np.asarray(img, dtype=np.float32)
    if arr.size and float(arr.max()) > maxval:
        raise ValueError(f"max image value {float(arr.max())} higher than expected bound {maxval}")
    return ((2.0 * (arr / np.float32(maxval)) - 1.0) * XRV_HALF_RANGE).astype(np.float32)


def center_crop(img: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Crop the largest centred square, with torchxrayvision's offsets.

    Parameters
    ----------
    img : ndarray
        ``(H, W)``.

    Returns
    -------
    ndarray
        ``(S, S)`` with ``S = min(H, W)``; a view of ``img``.
    """
    height, width = img.shape
    size = min(height, width)
    top = height // 2 - size // 2
    left = width // 2 - size // 2
    return img[top : top + size, left : left + size]


def resize(img: npt.NDArray[np.float32], size: int) -> npt.NDArray[np.float32]:
    """Resize a square image with bilinear interpolation and antialiasing.

    Parameters
    ----------
    img : ndarray
        ``(S, S)`` float32.
    size : int
        Output side, pixels.

    Returns
    -------
    ndarray
        ``(size, size)`` float32.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    out = F.interpolate(
        tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return out[0, 0].numpy()


def preprocess_xrv(display: npt.NDArray[np.float32], size: int = 224) -> npt.NDArray[np.float32]:
    """Turn a display-ready radiograph into the model input.

    Parameters
    ----------
    display : ndarray
        ``(H, W)`` float32 in ``[0, 1]``, MONOCHROME2 (bright = dense), as
        returned by :func:`models.preprocessing.pixels.display_image`.
    size : int
        Model input side, pixels (224).

    Returns
    -------
    ndarray
        ``(1, 1, size, size)`` float32 in ``[-1024, 1024]``.
    """
    scaled = xrv_normalize(np.clip(display, 0.0, 1.0), 1.0)
    return resize(center_crop(scaled), size)[None, None]
