"""The ``scale`` step: the final per-channel affine a model's training code applied.

Modes and their sources:

``keras_tf``
    ``x / 127.5 - 1`` (Keras ``imagenet_utils.preprocess_input``, mode
    ``"tf"``; MobileNet, Inception, Xception ...). Input in [0, 255].
``keras_torch``
    ``(x / 255 - mean) / std`` with ImageNet mean (0.485, 0.456, 0.406) and std
    (0.229, 0.224, 0.225), channels R, G, B (Keras mode ``"torch"``; DenseNet).
    Input in [0, 255].
``keras_caffe``
    RGB to BGR, then ``x - mean`` with mean (103.939, 116.779, 123.68) for
    B, G, R, no scaling (Keras mode ``"caffe"``; VGG, ResNet50). Input in
    [0, 255]; output channels are B, G, R.
``imagenet``
    ``(x - mean) / std`` with the ImageNet mean and std above, channels R, G,
    B (torchvision ``Normalize`` after ``ToTensor``). Input in [0, 1].
``mean_std``
    ``(x - mean) / std`` with ``mean`` and ``std`` from the manifest (a number
    or one per channel).
``affine``
    ``x * scale + offset`` with ``scale`` and ``offset`` from the manifest (a
    number or one per channel).
"""

from __future__ import annotations

import numpy as np
from pydicom import Dataset

from dicom_node.core.errors import PixelDataError

from .params import StepParams
from .types import FloatImage, Step

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""ImageNet channel means, R, G, B, for inputs in [0, 1]."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""ImageNet channel standard deviations, R, G, B, for inputs in [0, 1]."""
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
"""ImageNet channel means, B, G, R, for inputs in [0, 255] (Keras ``caffe`` mode)."""

MODES = ("keras_tf", "keras_torch", "keras_caffe", "imagenet", "mean_std", "affine")


def _per_channel(values: tuple[float, ...], channels: int, name: str) -> np.ndarray:
    if len(values) not in (1, channels):
        raise PixelDataError(
            f"scale: {name} has {len(values)} values, the image has {channels} channel(s)"
        )
    return np.asarray(values, dtype=np.float64).reshape(-1, 1, 1)


def keras_tf(image: FloatImage) -> FloatImage:
    """Keras ``preprocess_input`` mode ``tf``: ``x / 127.5 - 1`` (any shape)."""
    return image / 127.5 - 1.0


def keras_torch(image: FloatImage) -> FloatImage:
    """Keras ``preprocess_input`` mode ``torch`` on ``(3, H, W)`` R, G, B."""
    return standardize(image / 255.0, IMAGENET_MEAN, IMAGENET_STD)


def keras_caffe(image: FloatImage) -> FloatImage:
    """Keras ``preprocess_input`` mode ``caffe`` on ``(3, H, W)`` R, G, B; returns B, G, R."""
    if image.shape[0] != 3:
        raise PixelDataError(f"scale keras_caffe needs 3 channels, the image has {image.shape[0]}")
    return image[::-1] - np.asarray(CAFFE_MEAN_BGR).reshape(3, 1, 1)


def standardize(image: FloatImage, mean: tuple[float, ...], std: tuple[float, ...]) -> FloatImage:
    """``(x - mean) / std`` per channel on ``(C, H, W)`` (one value or one per channel)."""
    channels = image.shape[0]
    return (image - _per_channel(mean, channels, "mean")) / _per_channel(std, channels, "std")


def make_scale(params: StepParams) -> Step:
    """``scale``: the final affine; ``mode`` as in the module docstring."""
    mode = params.choice("mode", MODES)
    if mode == "mean_std":
        mean, std = params.numbers("mean"), params.numbers("std", positive=True)
        params.forbid("scale", "offset", reason="with mode mean_std")

        def scale_mean_std(image: FloatImage, ds: Dataset) -> FloatImage:
            return standardize(image, mean, std)

        return scale_mean_std
    if mode == "affine":
        factor, offset = params.numbers("scale"), params.numbers("offset", 0.0)
        params.forbid("mean", "std", reason="with mode affine")

        def scale_affine(image: FloatImage, ds: Dataset) -> FloatImage:
            channels = image.shape[0]
            return image * _per_channel(factor, channels, "scale") + _per_channel(
                offset, channels, "offset"
            )

        return scale_affine
    params.forbid("mean", "std", "scale", "offset", reason=f"with mode {mode} (fixed constants)")
    if mode == "keras_tf":
        return lambda image, ds: keras_tf(image)
    if mode == "keras_torch":
        return lambda image, ds: keras_torch(image)
    if mode == "keras_caffe":
        return lambda image, ds: keras_caffe(image)
    return lambda image, ds: standardize(image, IMAGENET_MEAN, IMAGENET_STD)
