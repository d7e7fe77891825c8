"""Value steps: Modality LUT, VOI LUT, MONOCHROME1 inversion, normalize, CT windows, gray to RGB.

Each ``make_<step>(params)`` reads and checks the step's parameters and returns
the configured step, a function ``(image, ds) -> image`` on ``(C, H, W)
float64`` arrays. The value functions themselves (``linear_map``,
``window``) are public so tests can check the formulas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydicom import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from dicom_node.core.errors import PixelDataError
from dicom_node.core.redact import reason_for

from .attributes import raw_value
from .decode import photometric
from .params import StepParams
from .ranges import RangeSpec, check_modality_lut, voi_kind
from .types import FloatImage, Step

WindowFunction = Literal["linear_exact", "linear", "sigmoid"]
WINDOW_FUNCTIONS: tuple[WindowFunction, ...] = ("linear_exact", "linear", "sigmoid")


def _gray(image: FloatImage, step: str) -> None:
    if image.shape[0] != 1:
        raise PixelDataError(f"{step} needs one channel, the image has {image.shape[0]}")


def _lut_input(values: FloatImage) -> np.ndarray:
    """LUT input values as integers (rounded down), as LUT Data is indexed by integers."""
    return np.floor(values).astype(np.int64)


def _pydicom_failure(step: str, exc: Exception) -> PixelDataError:
    return PixelDataError(f"{step}: the instance's attributes cannot be used ({reason_for(exc)})")


def make_modality_lut(params: StepParams) -> Step:
    """``modality_lut``: stored values to modality values (CT: Hounsfield units).

    PS3.3 C.11.1: the Modality LUT Sequence if present (inputs rounded down to
    integers), else Rescale Slope/Intercept (``x * slope + intercept``), else
    unchanged; via ``pydicom.pixels.apply_modality_lut``. Colour images pass
    unchanged (the Modality LUT applies to grayscale only). A Rescale that is
    not a number, or a Modality LUT without a usable descriptor, is a
    ``PixelDataError`` naming the attribute.
    """

    def modality_lut(image: FloatImage, ds: Dataset) -> FloatImage:
        if image.shape[0] != 1:
            return image
        check_modality_lut(ds)
        values = _lut_input(image) if raw_value(ds, "ModalityLUTSequence") else image
        try:
            out = apply_modality_lut(values, ds)
        except Exception as exc:  # pydicom texts may quote element values
            raise _pydicom_failure("modality_lut", exc) from exc
        return np.asarray(out, dtype=np.float64)

    return modality_lut


def make_voi_lut(params: StepParams) -> Step:
    """``voi_lut``: apply VOI transform ``index`` (PS3.3 C.11.2).

    Parameters (manifest): ``index`` (int, default 0), ``prefer_lut`` (bool,
    default true: a VOI LUT Sequence wins over Window Center/Width, as in
    ``pydicom.pixels.apply_voi_lut``). Instances without that VOI, and colour
    images, pass unchanged. Output range: see ``ranges.voi_range``.
    """
    index = params.integer("index", 0, minimum=0)
    prefer_lut = params.boolean("prefer_lut", True)

    def voi_lut(image: FloatImage, ds: Dataset) -> FloatImage:
        if image.shape[0] != 1:
            return image
        kind = voi_kind(ds, index, prefer_lut)
        if kind is None:
            return image
        values = _lut_input(image) if kind == "lut" else image
        try:
            out = apply_voi_lut(values, ds, index=index, prefer_lut=kind == "lut")
        except Exception as exc:  # pydicom texts may quote element values
            raise _pydicom_failure("voi_lut", exc) from exc
        return np.asarray(out, dtype=np.float64)

    return voi_lut


def make_invert_monochrome1(params: StepParams) -> Step:
    """``invert_monochrome1``: make MONOCHROME1 look like MONOCHROME2 (bright = dense).

    ``x -> low + high - x`` with ``[low, high]`` from ``reference`` (a range
    source, see :mod:`models.preprocessing.ranges`); ``image_max`` gives
    ``max - x``. MONOCHROME2 and colour images pass unchanged.
    torchxrayvision 1.5 (``read_xray_dcm``) is ``reference: bits_stored``
    (``2**BitsStored - 1 - x``); the widely copied Kaggle ``read_xray``
    (VinBigData 2021 kernels) is ``np.amax(x) - x``, ``reference: image_max``.
    """
    spec = RangeSpec.read(
        params, "reference", ("bits_stored", "voi_range", "image_minmax", "image_max", "fixed")
    )

    def invert_monochrome1(image: FloatImage, ds: Dataset) -> FloatImage:
        if photometric(ds) != "MONOCHROME1" or image.shape[0] != 1:
            return image
        low, high = spec.resolve(image, ds)
        return (low + high) - image

    return invert_monochrome1


def linear_map(
    image: FloatImage, low: float, high: float, to: tuple[float, float], clip: bool
) -> FloatImage:
    """Map ``[low, high]`` linearly onto ``to``: ``(x - low) / (high - low) * (b - a) + a``.

    Parameters
    ----------
    image : ndarray
        Any shape, float64.
    low, high : float
        Source interval, ``low < high``.
    to : (float, float)
        Target interval ``(a, b)``.
    clip : bool
        Clip the result to ``to``.

    Returns
    -------
    ndarray
        float64, same shape.
    """
    a, b = to
    out = (image - low) / (high - low) * (b - a) + a
    return np.clip(out, a, b) if clip else out


def make_normalize(params: StepParams) -> Step:
    """``normalize``: map a value range linearly onto ``to``.

    Parameters (manifest): ``source`` (range source: ``bits_stored``,
    ``voi_range``, ``image_minmax`` or ``fixed`` with ``low``/``high``;
    ``voi_range`` takes ``fallback`` and ``voi_index``), ``to`` ([lo, hi],
    default [0, 1]), ``clip`` (bool, default false). torchxrayvision's
    ``normalize(img, maxval)``, ``(2 * img / maxval - 1) * 1024``, is
    ``source: bits_stored, to: [-1024, 1024]``.
    """
    spec = RangeSpec.read(params, "source", ("bits_stored", "voi_range", "image_minmax", "fixed"))
    to = params.interval("to", (0.0, 1.0))
    clip = params.boolean("clip", False)

    def normalize(image: FloatImage, ds: Dataset) -> FloatImage:
        low, high = spec.resolve(image, ds)
        return linear_map(image, low, high, to, clip)

    return normalize


def window(
    values: FloatImage,
    center: float,
    width: float,
    function: WindowFunction = "linear_exact",
    to: tuple[float, float] = (0.0, 1.0),
) -> FloatImage:
    """Apply one window and map its output range onto ``to``.

    Parameters
    ----------
    values : ndarray
        Modality values (CT: HU), any shape, float64.
    center, width : float
        Window Center and Width in the same units; ``width > 0`` (``>= 1``
        for ``linear``).
    function : {"linear_exact", "linear", "sigmoid"}
        ``linear_exact`` (PS3.3 C.11.2.1.3.2, and the RSNA 2019 ICH kernels'
        ``window_image``): clip to ``[c - w/2, c + w/2]`` and map that onto
        ``to``. ``linear`` (C.11.2.1.2.1, the DICOM default): the same with
        ``c - 0.5`` and ``w - 1``. ``sigmoid`` (C.11.2.1.3.1):
        ``1 / (1 + exp(-4 (x - c) / w))`` mapped onto ``to``.
    to : (float, float)
        Output interval.

    Returns
    -------
    ndarray
        float64, same shape, within ``to``.
    """
    a, b = to
    if function == "sigmoid":
        with np.errstate(over="ignore"):
            unit = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    else:
        if function == "linear":
            center, width = center - 0.5, width - 1.0
        unit = np.clip((values - center) / width + 0.5, 0.0, 1.0)
    return unit * (b - a) + a


@dataclass(frozen=True)
class _Window:
    center: float
    width: float


def make_windows(params: StepParams) -> Step:
    """``windows``: one output channel per window, from one input channel.

    Parameters (manifest): ``windows`` (list of ``{center, width}`` plus an
    optional ``name``), ``to`` ([lo, hi], default [0, 1]), ``function``
    (``linear_exact`` default, ``linear``, ``sigmoid``; see :func:`window`).
    Apply ``modality_lut`` first so that centres and widths are in HU.
    """
    function = params.choice("function", WINDOW_FUNCTIONS, "linear_exact")
    to = params.interval("to", (0.0, 1.0))
    windows: list[_Window] = []
    for i, item in enumerate(params.mappings("windows")):
        unknown = set(item) - {"center", "width", "name"}
        if unknown:
            raise params.error(f"windows[{i}]", f"unknown key(s) {sorted(unknown)}")
        center, width = item.get("center"), item.get("width")
        if isinstance(center, bool) or not isinstance(center, int | float):
            raise params.error(f"windows[{i}].center", f"must be a number, got {center!r}")
        if isinstance(width, bool) or not isinstance(width, int | float) or width <= 0:
            raise params.error(f"windows[{i}].width", f"must be a number > 0, got {width!r}")
        if function == "linear" and width < 1:
            raise params.error(f"windows[{i}].width", "must be >= 1 for function linear")
        windows.append(_Window(float(center), float(width)))

    def windows_step(image: FloatImage, ds: Dataset) -> FloatImage:
        _gray(image, "windows")
        return np.concatenate([window(image, w.center, w.width, function, to) for w in windows])

    return windows_step


def make_gray_to_rgb(params: StepParams) -> Step:
    """``gray_to_rgb``: replicate one channel to three (R = G = B); colour images pass unchanged."""

    def gray_to_rgb(image: FloatImage, ds: Dataset) -> FloatImage:
        if image.shape[0] == 3:
            return image
        _gray(image, "gray_to_rgb")
        return np.repeat(image, 3, axis=0)

    return gray_to_rgb
