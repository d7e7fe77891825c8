"""Map a model-input-sized map back onto the source image's pixel grid.

The manifest's preprocessing (:mod:`models.preprocessing`) changes the geometry
of the decoded frame ``(Rows, Columns)`` only in three steps: ``center_crop``
(a centred window, origin by :func:`models.preprocessing.geometry.crop_origin`),
``pad_square`` (zero border on the short side) and ``resize``. Every other step
of the vocabulary maps values or channels and keeps ``(H, W)``.

:func:`trace` replays those steps on the frame size and records each one;
:meth:`Geometry.to_source` undoes them in reverse order on a map ``(h, w)`` at
the model's input size:

- ``resize``: bilinear resampling back to the size before the step (torch
  ``interpolate``, ``align_corners=False``, antialiased when shrinking);
- ``pad_square``: the padding is cut off again;
- ``center_crop``: the map is put back at the crop's origin; the pixels the
  crop removed were not seen by the model and get 0.

This is exact for the placement (the crop and pad offsets are the ones the
preprocessing used) and bilinear for the resampling. A step that is not in the
vocabulary (a site's own step in a custom registry) may change the geometry in
a way not known here: then :attr:`Geometry.exact` is False and the map is simply
resized to ``Rows x Columns``; the caller says so in the saliency method.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from models.preprocessing.geometry import OFFSETS, crop_origin
from models.preprocessing.params import StepParams

SHAPE_KEEPING = frozenset(
    {"modality_lut", "voi_lut", "invert_monochrome1", "normalize", "windows", "gray_to_rgb",
     "scale"}
)  # fmt: skip
"""Vocabulary steps that keep ``(H, W)``."""

Map = npt.NDArray[np.float32]
"""A 2-D map ``(H, W) float32``."""


@dataclass(frozen=True)
class Op:
    """One geometric step, as it ran on an image of ``before`` size.

    Attributes
    ----------
    kind : {"crop", "pad", "resize"}
    before : (int, int)
        ``(H, W)`` before the step.
    after : (int, int)
        ``(H, W)`` after it.
    origin : (int, int)
        ``crop``: top-left of the crop in the ``before`` image; ``pad``: top-left of
        the ``before`` image in the padded one; ``resize``: (0, 0).
    """

    kind: Literal["crop", "pad", "resize"]
    before: tuple[int, int]
    after: tuple[int, int]
    origin: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class Geometry:
    """How the preprocessing moved pixels from the source frame to the model input.

    Attributes
    ----------
    source : (int, int)
        ``(Rows, Columns)`` of the decoded frame.
    ops : tuple of Op
        The geometric steps in preprocessing order.
    exact : bool
        False when a step of unknown geometry ran (see the module docstring).
    """

    source: tuple[int, int]
    ops: tuple[Op, ...]
    exact: bool = True

    def describe(self) -> str:
        """``"center_crop, resize undone"`` or ``"resized to Rows x Columns (approximate)"``."""
        if not self.exact:
            return "resized to the source size (approximate geometry)"
        names = {"crop": "center_crop", "pad": "pad_square", "resize": "resize"}
        steps = ", ".join(names[op.kind] for op in self.ops)
        return f"{steps} undone" if steps else "no geometric step"

    def to_source(self, heat: Map) -> Map:
        """A model-input-sized map on the source frame's grid.

        Parameters
        ----------
        heat : ndarray
            ``(h, w) float32``, values in [0, 1], at the model input size (the last
            op's ``after``; any size when not :attr:`exact`).

        Returns
        -------
        ndarray
            ``(Rows, Columns) float32`` in [0, 1]; 0 where the crop removed pixels.

        Raises
        ------
        ValueError
            If ``heat`` is not 2-D or (exact geometry) not the model input size.
        """
        if heat.ndim != 2:
            raise ValueError(f"expected a 2-D map, got shape {heat.shape}")
        if not self.exact:
            return resample(heat, self.source)
        if self.ops and tuple(heat.shape) != self.ops[-1].after:
            raise ValueError(f"map {heat.shape} is not the model input size {self.ops[-1].after}")
        out = np.asarray(heat, np.float32)
        for op in reversed(self.ops):
            if op.kind == "resize":
                out = resample(out, op.before)
            elif op.kind == "pad":
                top, left = op.origin
                out = out[top : top + op.before[0], left : left + op.before[1]]
            else:
                full = np.zeros(op.before, np.float32)
                top, left = op.origin
                full[top : top + op.after[0], left : left + op.after[1]] = out
                out = full
        return np.ascontiguousarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


def trace(steps: Sequence[Mapping[str, Any]], rows: int, columns: int) -> Geometry:
    """Replay a manifest's preprocessing steps on the frame size.

    Parameters
    ----------
    steps : sequence of mapping
        The manifest's ``preprocessing`` list (already validated).
    rows, columns : int
        The source frame's size.

    Returns
    -------
    Geometry
        ``exact=False`` when a step outside the vocabulary ran.
    """
    size = (rows, columns)
    ops: list[Op] = []
    for index, spec in enumerate(steps):
        name = spec.get("step")
        params = StepParams(spec, index)
        if name == "center_crop":
            crop = params.optional_size("size") or (min(size), min(size))
            origin = crop_origin(size[0], size[1], crop, params.choice("offsets", OFFSETS, "xrv"))
            ops.append(Op("crop", size, crop, origin))
            size = crop
        elif name == "pad_square":
            side = max(size)
            align = params.choice("align", ("center", "start"), "center")
            origin = ((side - size[0]) // 2, (side - size[1]) // 2) if align == "center" else (0, 0)
            ops.append(Op("pad", size, (side, side), origin))
            size = (side, side)
        elif name == "resize":
            target = params.size("size")
            ops.append(Op("resize", size, target))
            size = target
        elif name not in SHAPE_KEEPING:
            return Geometry((rows, columns), tuple(ops), exact=False)
    return Geometry((rows, columns), tuple(ops))


def resample(heat: Map, size: tuple[int, int]) -> Map:
    """Bilinear resampling of a 2-D map to ``size = (H, W)``.

    torch ``nn.functional.interpolate(mode="bilinear", align_corners=False)``,
    with ``antialias=True`` when either side shrinks; weights are non-negative,
    so values stay in the input's range.

    Returns
    -------
    ndarray
        ``(H, W) float32``.
    """
    import torch
    import torch.nn.functional as F  # noqa: N812

    if tuple(heat.shape) == tuple(size):
        return np.asarray(heat, np.float32)
    shrink = size[0] < heat.shape[0] or size[1] < heat.shape[1]
    x = torch.from_numpy(np.ascontiguousarray(heat, np.float32))[None, None]
    with torch.no_grad():
        y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return np.asarray(y[0, 0].numpy(), dtype=np.float32)
