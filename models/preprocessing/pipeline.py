"""The preprocessor: decode, refuse a blank frame, the manifest's steps in order, float32."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

from dicom_node.core.errors import PixelDataError

from .decode import decode_first_frame
from .steps import BoundStep, StepRegistry, default_steps

BLANK = "image is constant (blank)"
"""Reason for a decoded frame whose stored values are all equal: it is never a model input."""


class HasPreprocessing(Protocol):
    """What :meth:`Preprocessor.from_manifest` needs of a manifest."""

    @property
    def preprocessing(self) -> Sequence[Mapping[str, Any]]:
        """The manifest's step list."""
        ...


def _build(steps: Sequence[Mapping[str, Any]], registry: StepRegistry) -> list[BoundStep]:
    if isinstance(steps, str | bytes | Mapping) or not isinstance(steps, Sequence):
        raise ValueError("preprocessing must be a list of steps")
    return [registry.build(spec, index) for index, spec in enumerate(steps)]


def validate_steps(
    steps: Sequence[Mapping[str, Any]], registry: StepRegistry | None = None
) -> None:
    """Check a manifest's ``preprocessing`` list without running it.

    Parameters
    ----------
    steps : list of dict
        ``[{step: <name>, ...params}, ...]``.
    registry : StepRegistry, optional
        Step vocabulary; default :func:`models.preprocessing.default_steps`.

    Raises
    ------
    ValueError
        Naming the position, the step and the problem: an unknown step, an
        unknown or missing parameter, or a bad value.
    """
    _build(steps, registry or default_steps())


class Preprocessor:
    """Turn one DICOM instance into a model's per-image input.

    Parameters
    ----------
    steps : list of dict
        The manifest's ``preprocessing`` list (vocabulary in
        :mod:`models.preprocessing`).
    registry : StepRegistry, optional
        Step vocabulary; default :func:`models.preprocessing.default_steps`.

    Raises
    ------
    ValueError
        If the steps do not validate (see :func:`validate_steps`).
    """

    def __init__(
        self, steps: Sequence[Mapping[str, Any]], registry: StepRegistry | None = None
    ) -> None:
        self._steps = _build(steps, registry or default_steps())
        self.steps: tuple[Mapping[str, Any], ...] = tuple(dict(step) for step in steps)

    @classmethod
    def from_manifest(
        cls, manifest: HasPreprocessing, registry: StepRegistry | None = None
    ) -> Preprocessor:
        """Build the preprocessor a manifest declares (its ``preprocessing`` list)."""
        return cls(manifest.preprocessing, registry)

    def __repr__(self) -> str:
        return f"Preprocessor({[step.name for step in self._steps]})"

    def pre(self, ds: Dataset) -> npt.NDArray[np.float32]:
        """Preprocess the first frame of ``ds``.

        Parameters
        ----------
        ds : pydicom.Dataset
            A complete instance, pixel data included. Not modified, except
            that pydicom may normalise the types of Rescale attributes.

        Returns
        -------
        ndarray
            ``(C, H, W) float32``, C-contiguous; channels and size as the
            steps make them (the manifest's ``input`` declares what the model
            expects; :mod:`models.contract` checks it).

        Raises
        ------
        PixelDataError
            If the pixel data cannot be decoded or is unsupported, the decoded
            frame is constant (:data:`BLANK`: nothing for a model to see), a step
            cannot apply to this instance (e.g. ``windows`` on colour
            data), or the result is not finite. Messages name the step and
            never quote patient data.
        """
        image = decode_first_frame(ds)
        if not np.all(np.isfinite(image)):
            raise PixelDataError("decoded pixel values are not all finite")
        if image.size == 0 or not np.ptp(image) > 0:
            raise PixelDataError(BLANK)
        for step in self._steps:
            where = f"preprocessing[{step.index}] ({step.name})"
            try:
                image = step.run(image, ds)
            except PixelDataError as exc:
                raise PixelDataError(f"{where}: {exc}") from exc
            except Exception as exc:  # texts from numpy/pydicom/Pillow may quote values
                raise PixelDataError(f"{where} failed: {type(exc).__name__}") from exc
        if image.ndim != 3:
            raise PixelDataError(f"preprocessing produced shape {image.shape}, expected (C, H, W)")
        if not np.all(np.isfinite(image)):
            raise PixelDataError("preprocessing produced non-finite values")
        return np.ascontiguousarray(image, dtype=np.float32)

    __call__ = pre
