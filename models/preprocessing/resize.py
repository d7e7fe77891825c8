"""The ``resize`` step, done by the library the model's training code used.

Resampling differs between libraries (kernel support, pixel-centre
convention, antialiasing), so a manifest names its ``engine`` and that
engine's own parameters; the result then equals the library's output up to
floating-point rounding.

``engine: skimage`` — ``skimage.transform.resize(image, (C, H, W), order,
mode=border, cval, clip, preserve_range=True, anti_aliasing)``. Parameters
``order`` (0-5; default skimage's: 1, bilinear, for float images),
``anti_aliasing`` (default skimage's: on when downsizing with ``order > 0``),
``border`` (``constant | edge | symmetric | reflect | wrap``; default
``reflect``, skimage's default), ``cval`` (default 0), ``clip`` (default
true). torchxrayvision's ``XRayResizer(size)`` is ``order`` and
``anti_aliasing`` left to skimage and ``border: constant``.

``engine: pil`` — Pillow's ``Image.resize((W, H), filter)`` on each channel.
``interpolation``: ``nearest``, ``bilinear``, ``bicubic``, ``box`` (alias
``area``), ``hamming``, ``lanczos`` (alias ``antialiased``: Pillow's former
``ANTIALIAS`` constant), i.e. Keras ``load_img(interpolation=...)`` and
torchvision ``Resize`` on PIL images. ``pixel_type``: ``float`` (default,
32-bit float "F" images, no rounding) or ``uint8`` (values rounded and clipped
to 0..255 and resized as 8-bit "L"/"RGB" images, as when training read 8-bit
PNG/JPEG files).

``engine: torch`` — ``torch.nn.functional.interpolate`` in float64.
``interpolation``: ``nearest`` (torch's legacy nearest), ``nearest_exact``,
``bilinear``, ``bicubic``, ``area``; ``antialias`` (bilinear/bicubic, default
false; true is torchvision ``Resize``'s tensor default and close to Pillow);
``align_corners`` (bilinear/bicubic, default false).

Libraries are imported when a resize first runs, so that validating a
manifest does not load torch, scikit-image or Pillow.
"""

from __future__ import annotations

import warnings

import numpy as np
from pydicom import Dataset

from dicom_node.core.errors import PixelDataError

from .params import StepParams
from .types import FloatImage, Step

ENGINES = ("skimage", "pil", "torch")
SKIMAGE_BORDERS = ("constant", "edge", "symmetric", "reflect", "wrap")
PIL_FILTERS: dict[str, str] = {
    "nearest": "NEAREST",
    "bilinear": "BILINEAR",
    "bicubic": "BICUBIC",
    "box": "BOX",
    "area": "BOX",
    "hamming": "HAMMING",
    "lanczos": "LANCZOS",
    "antialiased": "LANCZOS",
}
"""Pillow ``Image.Resampling`` members by manifest name (``area``, ``antialiased``: aliases)."""
TORCH_MODES: dict[str, str] = {
    "nearest": "nearest",
    "nearest_exact": "nearest-exact",
    "bilinear": "bilinear",
    "bicubic": "bicubic",
    "area": "area",
}
"""``torch.nn.functional.interpolate`` modes by manifest name."""


def resize_skimage(
    image: FloatImage,
    size: tuple[int, int],
    order: int | None = None,
    anti_aliasing: bool | None = None,
    border: str = "reflect",
    cval: float = 0.0,
    clip: bool = True,
) -> FloatImage:
    """Resize ``(C, H, W)`` to ``(C, *size)`` with ``skimage.transform.resize``.

    The channel axis is resized with factor 1, so channels do not mix (exactly
    as torchxrayvision's ``XRayResizer`` passes ``(1, size, size)``).
    """
    from skimage.transform import resize as sk_resize  # imported on use: heavy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skimage's anti-aliasing notices, as XRayResizer does
        out = sk_resize(
            image,
            (image.shape[0], *size),
            order=order,
            mode=border,
            cval=cval,
            clip=clip,
            preserve_range=True,
            anti_aliasing=anti_aliasing,
        )
    return np.asarray(out, dtype=np.float64)


def resize_pil(
    image: FloatImage, size: tuple[int, int], interpolation: str, pixel_type: str = "float"
) -> FloatImage:
    """Resize ``(C, H, W)`` to ``(C, *size)`` with Pillow's ``Image.resize``.

    ``pixel_type="float"`` resizes each channel as a mode "F" image;
    ``"uint8"`` rounds and clips to 0..255 and resizes one "L" or "RGB" image.
    """
    from PIL import Image

    resample = Image.Resampling[PIL_FILTERS[interpolation]]
    target = (size[1], size[0])  # Pillow takes (width, height)
    if pixel_type == "uint8":
        if image.shape[0] not in (1, 3):
            raise PixelDataError(f"resize pil uint8 needs 1 or 3 channels, got {image.shape[0]}")
        pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        frame = pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1)
        out = np.asarray(Image.fromarray(np.ascontiguousarray(frame)).resize(target, resample))
        out = out[np.newaxis] if out.ndim == 2 else np.moveaxis(out, -1, 0)
        return out.astype(np.float64)
    channels = [
        np.asarray(Image.fromarray(channel.astype(np.float32)).resize(target, resample))
        for channel in image
    ]
    return np.stack(channels).astype(np.float64)


def resize_torch(
    image: FloatImage,
    size: tuple[int, int],
    interpolation: str,
    antialias: bool = False,
    align_corners: bool | None = None,
) -> FloatImage:
    """Resize ``(C, H, W)`` to ``(C, *size)`` with ``torch.nn.functional.interpolate`` (float64)."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float64))[None]
    with torch.no_grad():
        out = F.interpolate(
            tensor,
            size=size,
            mode=TORCH_MODES[interpolation],
            align_corners=align_corners,
            antialias=antialias,
        )
    return out[0].numpy()


def make_resize(params: StepParams) -> Step:
    """``resize``: ``size`` (N or [H, W]), ``engine`` and the engine's own (module docs)."""
    size = params.size("size")
    engine = params.choice("engine", ENGINES)
    if engine == "skimage":
        params.forbid(
            "interpolation", "antialias", "align_corners", "pixel_type", reason="for skimage"
        )
        order = params.optional_integer("order", minimum=0, maximum=5)
        anti_aliasing = params.optional_boolean("anti_aliasing")
        border = params.choice("border", SKIMAGE_BORDERS, "reflect")
        cval = params.number("cval", 0.0)
        clip = params.boolean("clip", True)

        def resize_with_skimage(image: FloatImage, ds: Dataset) -> FloatImage:
            return resize_skimage(image, size, order, anti_aliasing, border, cval, clip)

        return resize_with_skimage
    params.forbid("order", "anti_aliasing", "border", "cval", "clip", reason=f"for {engine}")
    if engine == "pil":
        params.forbid("antialias", "align_corners", reason="for pil")
        interpolation = params.choice("interpolation", tuple(PIL_FILTERS))
        pixel_type = params.choice("pixel_type", ("float", "uint8"), "float")

        def resize_with_pil(image: FloatImage, ds: Dataset) -> FloatImage:
            return resize_pil(image, size, interpolation, pixel_type)

        return resize_with_pil
    params.forbid("pixel_type", reason="for torch")
    mode = params.choice("interpolation", tuple(TORCH_MODES))
    smooth = mode in ("bilinear", "bicubic")
    antialias = params.boolean("antialias", False)
    corners = params.optional_boolean("align_corners")
    if not smooth and (antialias or corners is not None):
        raise params.error("interpolation", "antialias and align_corners need bilinear or bicubic")
    align_corners = (corners or False) if smooth else None

    def resize_with_torch(image: FloatImage, ds: Dataset) -> FloatImage:
        return resize_torch(image, size, mode, antialias, align_corners)

    return resize_with_torch
