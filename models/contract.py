"""The input contract: the batch a backend gets is exactly what the manifest declares.

Preprocessing yields one ``(C, H, W) float32`` array per image;
:func:`to_batch` stacks them in the manifest's layout, and :func:`check_input`
refuses any batch whose rank, shape, dtype or values do not fit the manifest's
``input`` before a backend runs; :func:`check_image` checks one image the same
way before it joins a batch (MONAI bundles declare the same in
``metadata.json``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from dicom_node.core.errors import InputContractError
from models.manifest import Manifest

RANGE_TOLERANCE = 1e-3
"""Allowed excess over ``input.value_range``, as a fraction of its width (resize overshoot)."""


def to_batch(
    manifest: Manifest, images: Sequence[npt.NDArray[np.floating]]
) -> npt.NDArray[np.float32]:
    """Stack preprocessed images into a batch in the manifest's layout.

    Parameters
    ----------
    manifest : Manifest
        Declares ``input.layout`` and ``input.shape``.
    images : sequence of ndarray
        Each ``(C, H, W)``, float, as :class:`models.preprocessing.Preprocessor` returns.

    Returns
    -------
    ndarray
        ``(N, C, H, W)`` (NCHW) or ``(N, H, W, C)`` (NHWC), float32, C-contiguous.

    Raises
    ------
    InputContractError
        If there are no images or one is not ``input.chw``.
    """
    if not images:
        raise InputContractError(f"model {manifest.id}: empty batch")
    expected = manifest.input.chw
    for i, image in enumerate(images):
        if tuple(image.shape) != expected:
            raise InputContractError(
                f"model {manifest.id}: image {i} has shape {tuple(image.shape)}, "
                f"expected (C, H, W) = {expected}"
            )
    batch = np.stack([np.asarray(image, dtype=np.float32) for image in images])
    if manifest.input.layout == "NHWC":
        batch = batch.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(batch, dtype=np.float32)


def check_image(manifest: Manifest, image: npt.NDArray[np.generic]) -> None:
    """Refuse one preprocessed image that would make its whole batch fail :func:`check_input`.

    Run per image before batching, so that one image whose values or shape do
    not fit (a header that lies about its bit depth, say) is skipped alone.

    Parameters
    ----------
    manifest : Manifest
        Declares ``input.chw`` and ``value_range``.
    image : ndarray
        ``(C, H, W)``, as :class:`models.preprocessing.Preprocessor` returns.

    Raises
    ------
    InputContractError
        If the shape is not ``input.chw``, a value is not finite, or a value lies
        outside ``value_range`` by more than :data:`RANGE_TOLERANCE` of its width.
    """
    where = f"model {manifest.id} input {manifest.input.name!r}"
    if tuple(image.shape) != manifest.input.chw:
        raise InputContractError(
            f"{where}: image shape {tuple(image.shape)}, expected (C, H, W) = {manifest.input.chw}"
        )
    _check_values(manifest, image, where)


def _check_values(manifest: Manifest, values: npt.NDArray[np.generic], where: str) -> None:
    if not np.isfinite(values).all():
        raise InputContractError(f"{where}: contains NaN or infinite values")
    low, high = manifest.input.value_range
    slack = RANGE_TOLERANCE * (high - low)
    seen_low, seen_high = float(values.min()), float(values.max())
    if seen_low < low - slack or seen_high > high + slack:
        raise InputContractError(
            f"{where}: values in [{seen_low:.6g}, {seen_high:.6g}], "
            f"declared value_range [{low:.6g}, {high:.6g}]"
        )


def check_input(manifest: Manifest, batch: npt.NDArray[np.generic]) -> None:
    """Refuse a batch that does not fit the manifest's input contract.

    Parameters
    ----------
    manifest : Manifest
        Declares ``input.shape`` (without N), ``layout``, ``dtype`` and ``value_range``.
    batch : ndarray
        ``(N, *input.shape)``.

    Raises
    ------
    InputContractError
        If the rank or per-image shape differs (a layout mix-up shows here),
        N is 0, the dtype is not ``input.dtype``, a value is not finite, or a
        value lies outside ``value_range`` by more than :data:`RANGE_TOLERANCE`
        of its width.
    """
    spec = manifest.input
    where = f"model {manifest.id} input {spec.name!r}"
    if not isinstance(batch, np.ndarray):
        raise InputContractError(f"{where}: expected a numpy array, got {type(batch).__name__}")
    if batch.ndim != 4 or tuple(batch.shape[1:]) != tuple(spec.shape):
        raise InputContractError(
            f"{where}: shape {tuple(batch.shape)}, expected (N, {', '.join(map(str, spec.shape))}) "
            f"in {spec.layout} layout"
        )
    if batch.shape[0] == 0:
        raise InputContractError(f"{where}: empty batch (N = 0)")
    if batch.dtype != np.dtype(spec.dtype):
        raise InputContractError(f"{where}: dtype {batch.dtype}, expected {spec.dtype}")
    _check_values(manifest, batch, where)
