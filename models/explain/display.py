"""The source image as a viewer shows it: 8-bit MONOCHROME2 at Rows x Columns.

Built with the preprocessing vocabulary (:mod:`models.preprocessing`), so the
pixels are decoded exactly as for the analysis (same decoders, same checks):

1. ``modality_lut``: Modality LUT or Rescale Slope/Intercept (PS3.3 C.11.1);
2. ``voi_lut``: the instance's first VOI LUT or window (PS3.3 C.11.2), when it has one;
3. ``invert_monochrome1`` over the VOI's output range (the image's own range
   without a VOI): MONOCHROME1 becomes MONOCHROME2 (PS3.3 C.7.6.3.1.2);
4. ``normalize`` that range onto [0, 255], clipped.

Colour images become grey by ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B),
since the heat map's colours are laid over a grey image.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

from models.preprocessing import Preprocessor

DISPLAY_STEPS: tuple[dict[str, object], ...] = (
    {"step": "modality_lut"},
    {"step": "voi_lut"},
    {"step": "invert_monochrome1", "reference": "voi_range", "fallback": "image_minmax"},
    {"step": "normalize", "source": "voi_range", "fallback": "image_minmax", "to": [0, 255],
     "clip": True},
)  # fmt: skip
"""The display pipeline (see the module docstring)."""

LUMA = np.array([0.299, 0.587, 0.114], np.float64)
"""ITU-R BT.601 luma weights for R, G, B."""


def display_preprocessor() -> Preprocessor:
    """The preprocessor of :data:`DISPLAY_STEPS`."""
    return Preprocessor(DISPLAY_STEPS)


def display_image(ds: Dataset, preprocessor: Preprocessor | None = None) -> npt.NDArray[np.uint8]:
    """Render the first frame of an instance as an 8-bit MONOCHROME2 image.

    Parameters
    ----------
    ds : pydicom.Dataset
        A complete instance, pixel data included.
    preprocessor : Preprocessor, optional
        :func:`display_preprocessor` (made here when not given).

    Returns
    -------
    ndarray
        ``(Rows, Columns) uint8``, 0 black, 255 white.

    Raises
    ------
    PixelDataError
        When the pixel data cannot be decoded or is blank (as for the analysis).
    """
    image = (preprocessor or display_preprocessor())(ds).astype(np.float64)
    gray = image[0] if image.shape[0] == 1 else np.tensordot(LUMA, image[:3], axes=1)
    return np.ascontiguousarray(np.clip(np.rint(gray), 0, 255).astype(np.uint8))
