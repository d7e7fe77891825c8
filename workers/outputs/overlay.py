"""The key image's pixels: a heat map blended over the grey source, text burned in below.

- :func:`fit`: a display image and its heat map scaled down together so the
  long side is at most :data:`MAX_SIDE` (Pillow, Lanczos for the image, bilinear
  for the map; never enlarged).
- :func:`heat_overlay`: the map coloured with a matplotlib colormap
  (:data:`COLORMAP`, ``matplotlib.colormaps``) and alpha-blended over the grey
  image, alpha proportional to the heat (``alpha = MAX_ALPHA * heat``): cold
  areas keep the source as it is, hot areas turn the colormap's hot colours.
- :func:`text_band`: a dark band, as wide as the image, with the text lines in
  Pillow's default font (``ImageFont.load_default(size)``, FreeType) scaled with
  the image width, long lines wrapped at words, and a colour scale
  ("low ... high") of the colormap.
- :func:`compose`: all three: ``(H + band, W, 3) uint8`` RGB.

The band is appended below the image, not drawn over it, so no anatomy is hidden.
matplotlib and Pillow are imported on use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

MAX_SIDE = 2048
"""Long side of the key image's picture, pixels, at most (larger sources are scaled down)."""
COLORMAP = "jet"
"""matplotlib colormap of the heat map (blue cold, red hot: the Grad-CAM paper's figures)."""
MAX_ALPHA = 0.5
"""Opacity of the colour where the heat is 1."""
BAND_RGB = (16, 16, 16)
"""Background of the text band."""
WHITE = (255, 255, 255)
YELLOW = (255, 210, 0)
MIN_FONT = 12
"""Smallest font size, pixels (small sources)."""
FONT_PER_WIDTH = 1 / 64
"""Font size per pixel of image width (30 px for a 1841 px wide CR)."""

RGBImage = npt.NDArray[np.uint8]
"""``(H, W, 3) uint8`` R, G, B."""


@dataclass(frozen=True)
class TextLine:
    """One line of burned-in text and its colour (R, G, B)."""

    text: str
    color: tuple[int, int, int] = WHITE


def fit(
    image: npt.NDArray[np.uint8], heat: npt.NDArray[np.float32], max_side: int = MAX_SIDE
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
    """Scale a display image and its heat map down so the long side is <= ``max_side``.

    Parameters
    ----------
    image : ndarray
        ``(H, W) uint8``.
    heat : ndarray
        ``(H, W) float32`` in [0, 1].
    max_side : int
        Largest allowed side, pixels.

    Returns
    -------
    (ndarray, ndarray)
        Both ``(H', W')``, same aspect ratio (rounded); unchanged when small enough.

    Raises
    ------
    ValueError
        If the shapes differ or are not 2-D.
    """
    if image.ndim != 2 or image.shape != heat.shape:
        raise ValueError(f"image {image.shape} and heat {heat.shape} must be equal 2-D shapes")
    rows, columns = image.shape
    scale = max_side / max(rows, columns)
    if scale >= 1:
        return image, heat
    from PIL import Image

    size = (max(1, round(columns * scale)), max(1, round(rows * scale)))  # Pillow: (W, H)
    small = Image.fromarray(image).resize(size, Image.Resampling.LANCZOS)
    small_heat = Image.fromarray(np.asarray(heat, np.float32), mode="F").resize(
        size, Image.Resampling.BILINEAR
    )
    return (
        np.asarray(small, dtype=np.uint8),
        np.clip(np.asarray(small_heat, dtype=np.float32), 0.0, 1.0),
    )


def colormap_lut(name: str = COLORMAP) -> npt.NDArray[np.float64]:
    """The colormap as a ``(256, 3) float64`` table of R, G, B in [0, 1]."""
    import matplotlib

    cmap = matplotlib.colormaps[name].resampled(256)
    return np.asarray(cmap(np.arange(256))[:, :3], dtype=np.float64)


def heat_overlay(
    image: npt.NDArray[np.uint8],
    heat: npt.NDArray[np.float32],
    colormap: str = COLORMAP,
    max_alpha: float = MAX_ALPHA,
) -> RGBImage:
    """Blend the coloured heat map over the grey image.

    ``out = (1 - a) * grey + a * 255 * colormap(heat)`` with ``a = max_alpha * heat``,
    the heat quantised to 256 levels (the colormap's resolution), in float32.

    Parameters
    ----------
    image : ndarray
        ``(H, W) uint8`` grey (MONOCHROME2).
    heat : ndarray
        ``(H, W) float32`` in [0, 1] (values outside are clipped).
    colormap : str
        A ``matplotlib.colormaps`` name.
    max_alpha : float
        Opacity where the heat is 1, in [0, 1].

    Returns
    -------
    ndarray
        ``(H, W, 3) uint8`` RGB.
    """
    if image.shape != heat.shape:
        raise ValueError(f"image {image.shape} and heat {heat.shape} differ")
    h = np.clip(np.nan_to_num(np.asarray(heat, np.float32)), 0.0, 1.0)
    index = np.rint(h * 255).astype(np.uint8)  # heat quantised to 256 levels
    colors = (colormap_lut(colormap) * 255.0).astype(np.float32)[index]
    alpha = (np.float32(max_alpha / 255.0) * index.astype(np.float32))[..., None]
    grey = np.asarray(image, np.float32)[..., None]
    out = grey + alpha * (colors - grey)
    return np.ascontiguousarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def font_size(width: int) -> int:
    """Font size for an image ``width`` pixels wide: ``max(MIN_FONT, width * FONT_PER_WIDTH)``."""
    return max(MIN_FONT, round(width * FONT_PER_WIDTH))


def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def wrap(text: str, font: Any, width: float) -> list[str]:
    """Cut ``text`` at spaces into lines no wider than ``width`` pixels (a long word alone)."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if current and font.getlength(candidate) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    return [*lines, current] if current else lines or [""]


def text_band(width: int, lines: Sequence[TextLine], colormap: str = COLORMAP) -> RGBImage:
    """A dark band with the text lines and a colour scale, ``width`` pixels wide.

    Parameters
    ----------
    width : int
        Band width (the image's), pixels.
    lines : sequence of TextLine
        Drawn top to bottom, each wrapped to the width.
    colormap : str
        Colormap of the scale drawn at the band's bottom ("low" ... "high").

    Returns
    -------
    ndarray
        ``(h, width, 3) uint8``; ``h`` grows with the number of wrapped lines.
    """
    from PIL import Image, ImageDraw

    size = font_size(width)
    font = _font(size)
    margin = max(4, size // 2)
    step = round(size * 1.3)
    wrapped = [
        (part, line.color) for line in lines for part in wrap(line.text, font, width - 2 * margin)
    ]
    scale_height = max(6, size // 2)
    height = margin + step * (len(wrapped) + 1) + scale_height + margin
    band = Image.new("RGB", (width, height), BAND_RGB)
    draw = ImageDraw.Draw(band)
    y = margin
    for text, color in wrapped:
        draw.text((margin, y), text, fill=color, font=font)
        y += step
    low, high = "low", "high"
    draw.text((margin, y), low, fill=WHITE, font=font)
    right = width - margin - font.getlength(high)
    draw.text((right, y), high, fill=WHITE, font=font)
    left = margin + font.getlength(low) + margin
    span = max(1, int(right - margin - left))
    lut = (colormap_lut(colormap) * 255).round().astype(np.uint8)
    ramp = lut[np.linspace(0, 255, span).round().astype(np.intp)]
    pixels = np.array(band)
    top = y + (size - scale_height) // 2
    pixels[top : top + scale_height, int(left) : int(left) + span] = ramp[None, :, :]
    return pixels


def compose(
    image: npt.NDArray[np.uint8],
    heat: npt.NDArray[np.float32],
    lines: Sequence[TextLine],
    max_side: int = MAX_SIDE,
    colormap: str = COLORMAP,
) -> RGBImage:
    """The key image's pixels: :func:`fit`, :func:`heat_overlay`, then :func:`text_band` below.

    Parameters
    ----------
    image : ndarray
        ``(H, W) uint8`` grey display image.
    heat : ndarray
        ``(H, W) float32`` in [0, 1].
    lines : sequence of TextLine
        Text burned in below the image.
    max_side : int
        Long side of the (scaled) image, pixels, at most.
    colormap : str
        A ``matplotlib.colormaps`` name.

    Returns
    -------
    ndarray
        ``(H' + band, W', 3) uint8`` RGB, the image on top, the band below.
    """
    small, small_heat = fit(image, heat, max_side)
    picture = heat_overlay(small, small_heat, colormap)
    band = text_band(picture.shape[1], lines, colormap)
    return np.ascontiguousarray(np.concatenate([picture, band], axis=0))
