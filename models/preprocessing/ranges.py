"""Value ranges that ``normalize`` and ``invert_monochrome1`` map from.

A *range source* names where ``[low, high]`` comes from:

``bits_stored``
    The values the stored bits can hold (PS3.3 C.7.6.3.1.1): ``[0,
    2**BitsStored - 1]`` when Pixel Representation is 0 (unsigned), else
    ``[-2**(BitsStored-1), 2**(BitsStored-1) - 1]``. For unsigned data this is
    torchxrayvision's ``max_possible_pixel_val`` (``utils.read_xray_dcm``).
    It describes stored values, which is also the output range of pydicom's
    windowing of unsigned data without Rescale.
``voi_range``
    What the instance's VOI transform can output: for a window (PS3.3
    C.11.2.1.2), pydicom's output range (the stored range, through Rescale
    Slope/Intercept or the Modality LUT bit depth when present); for a VOI LUT
    Sequence item, its smallest and largest entries. Instances without a VOI
    use ``fallback``.
``image_minmax``
    The image's own minimum and maximum (per image, not per channel).
``image_max``
    ``[0, max]`` of the image (only for ``invert_monochrome1``: ``max - x``).
``fixed``
    ``low`` and ``high`` given in the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydicom import Dataset
from pydicom.pixels import apply_voi_lut
from pydicom.sequence import Sequence as PydicomSequence

from dicom_node.core.errors import PixelDataError

from .attributes import integer, numbers, raw_value, single_number, text, where
from .params import StepParams
from .types import FloatImage

RangeSource = Literal["bits_stored", "voi_range", "image_minmax", "image_max", "fixed"]
Fallback = Literal["bits_stored", "image_minmax"]
FALLBACKS: tuple[Fallback, ...] = ("bits_stored", "image_minmax")


def stored_range(ds: Dataset) -> tuple[float, float]:
    """Return the range the stored bits can hold (see module docstring).

    Raises
    ------
    PixelDataError
        If Bits Stored is missing or not in 1..32, or Pixel Representation is not 0 or 1.
    """
    bits = integer(ds, "BitsStored", 1, 32)
    signed = integer(ds, "PixelRepresentation", 0, 1) if raw_value(ds, "PixelRepresentation") else 0
    if signed == 0:
        return 0.0, float(2**bits - 1)
    return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)


def check_modality_lut(ds: Dataset) -> None:
    """Check what pydicom's Modality LUT and windowing read: Rescale, Modality LUT Sequence.

    Raises
    ------
    PixelDataError
        If Rescale Slope or Intercept is not a single finite number, is empty
        while the other is present, or the slope is 0, or the first Modality
        LUT Sequence item has no usable LUT Descriptor or LUT Data.
    """
    slope = single_number(ds, "RescaleSlope")
    intercept = single_number(ds, "RescaleIntercept")
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:  # pydicom then applies both
        for keyword, value in (("RescaleSlope", slope), ("RescaleIntercept", intercept)):
            if value is None:
                raise PixelDataError(f"{where(keyword)} is empty")
    if slope == 0:
        raise PixelDataError(f"{where('RescaleSlope')} is 0")
    items = raw_value(ds, "ModalityLUTSequence")
    if items is not None:
        _check_lut_item(items, "ModalityLUTSequence", 0)


def _check_lut_item(items: object, sequence: str, index: int) -> None:
    if not isinstance(items, PydicomSequence):
        raise PixelDataError(f"{where(sequence)} is not a sequence")
    if index >= len(items):
        return
    item = items[index]
    at = f"{where(sequence)} item {index + 1}"
    descriptor = numbers(item, "LUTDescriptor")
    if descriptor is None or len(descriptor) != 3:
        raise PixelDataError(f"{at}: {where('LUTDescriptor')} is invalid")
    entries, _, bits = descriptor
    if not (0 <= entries <= 65535 and 8 <= bits <= 16):
        raise PixelDataError(f"{at}: {where('LUTDescriptor')} is invalid")
    if raw_value(item, "LUTData") is None:
        raise PixelDataError(f"{at}: {where('LUTData')} is missing")


def _window_count(ds: Dataset) -> int:
    """How many windows the header gives (0: none); raises on a malformed window."""
    centers, widths = numbers(ds, "WindowCenter"), numbers(ds, "WindowWidth")
    if centers is None or widths is None:
        return 0
    if len(centers) != len(widths):
        raise PixelDataError(
            f"{where('WindowCenter')} and {where('WindowWidth')} differ in their number of values"
        )
    function = text(ds, "VOILUTFunction") or "LINEAR"
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        raise PixelDataError(f"{where('VOILUTFunction')} has an unknown value")
    too_small = (lambda w: w < 1) if function == "LINEAR" else (lambda w: w <= 0)
    if any(too_small(w) for w in widths):
        raise PixelDataError(f"{where('WindowWidth')} is too small for {function}")
    return len(centers)


def voi_kind(ds: Dataset, index: int = 0, prefer_lut: bool = True) -> str | None:
    """Tell which VOI transform pydicom's ``apply_voi_lut`` would apply, or None.

    Mirrors ``pydicom.pixels.apply_voi_lut``: a VOI LUT Sequence whose first
    item has LUT Descriptor and LUT Data, and/or Window Center and Width; when
    both are present ``prefer_lut`` chooses. Returns None as well when the
    chosen kind has no item or value number ``index`` (0-based).

    Returns
    -------
    {"lut", "window"} or None

    Raises
    ------
    PixelDataError
        If the attributes that would be used are malformed: a Window Center or
        Width that is not a number, their numbers of values differing, a
        window width too small for the VOI LUT Function (PS3.3 C.11.2.1.2), an
        unknown VOI LUT Function, a LUT Descriptor that is not three valid
        numbers, or a Rescale that is not a number.
    """
    items = raw_value(ds, "VOILUTSequence")
    if items is None:
        items = PydicomSequence()
    if not isinstance(items, PydicomSequence):
        raise PixelDataError(f"{where('VOILUTSequence')} is not a sequence")
    valid_lut = len(items) > 0 and None not in (
        raw_value(items[0], "LUTDescriptor"),
        raw_value(items[0], "LUTData"),
    )
    windows = _window_count(ds)
    if valid_lut and (prefer_lut or not windows):
        _check_lut_item(items, "VOILUTSequence", index)
        return "lut" if index < len(items) else None
    if windows:
        check_modality_lut(ds)  # the window's output range depends on it
        return "window" if index < windows else None
    return None


def voi_range(ds: Dataset, index: int = 0, prefer_lut: bool = True) -> tuple[float, float] | None:
    """Return the output range of VOI transform ``index``, or None when there is none.

    Raises
    ------
    PixelDataError
        If the VOI attributes cannot be used (e.g. a VOI LUT entry size pydicom
        does not support, a non-positive window width).
    """
    kind = voi_kind(ds, index, prefer_lut)
    if kind is None:
        return None
    try:
        if kind == "lut":
            descriptor = ds.VOILUTSequence[index].LUTDescriptor
            entries, first = int(descriptor[0]) or 2**16, int(descriptor[1])
            domain = np.arange(first, first + entries, dtype=np.int64)
            out = apply_voi_lut(domain, ds, index=index, prefer_lut=True)
        else:
            extremes = np.array([-np.inf, np.inf], dtype=np.float64)
            with np.errstate(over="ignore", invalid="ignore"):
                out = apply_voi_lut(extremes, ds, index=index, prefer_lut=False)
    except Exception as exc:  # pydicom texts may quote element values
        raise PixelDataError(f"VOI {index} cannot be used: {type(exc).__name__}") from exc
    low, high = float(np.min(out)), float(np.max(out))
    return (low, high) if high > low else None


@dataclass(frozen=True)
class RangeSpec:
    """Where a step's ``[low, high]`` comes from (see the module docstring)."""

    source: RangeSource
    low: float = 0.0
    high: float = 1.0
    fallback: Fallback = "image_minmax"
    voi_index: int = 0

    @classmethod
    def read(cls, params: StepParams, key: str, sources: tuple[RangeSource, ...]) -> RangeSpec:
        """Read ``key`` (the source) and its companions ``low``, ``high``, ``fallback``."""
        source = params.choice(key, sources)
        if source == "fixed":
            low, high = params.number("low"), params.number("high")
            if not low < high:
                raise params.error("low", f"needs low < high, got {low} and {high}")
            params.forbid("fallback", "voi_index", reason=f"with {key}: fixed")
            return cls(source, low, high)
        params.forbid("low", "high", reason=f"unless {key}: fixed")
        if source == "voi_range":
            fallback = params.choice("fallback", FALLBACKS, "image_minmax")
            index = params.integer("voi_index", 0, minimum=0)
            return cls(source, fallback=fallback, voi_index=index)
        params.forbid("fallback", "voi_index", reason=f"unless {key}: voi_range")
        return cls(source)

    def resolve(self, image: FloatImage, ds: Dataset) -> tuple[float, float]:
        """Return ``(low, high)`` for this image.

        Raises
        ------
        PixelDataError
            If the range is empty (a constant image for ``image_minmax``).
        """
        source: str = self.source
        if source == "voi_range":
            found = voi_range(ds, self.voi_index)
            if found is not None:
                return found
            source = self.fallback
        if source == "fixed":
            return self.low, self.high
        if source == "bits_stored":
            return stored_range(ds)
        low, high = float(np.min(image)), float(np.max(image))
        if source == "image_max":
            low = 0.0
        if not high > low:
            raise PixelDataError(f"image values give an empty range for {source}: constant image")
        return low, high
