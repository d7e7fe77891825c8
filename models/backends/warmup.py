"""Warm-up: run every batch size the batcher will use once, before serving.

torch on CUDA compiles and captures one CUDA graph per size there; TensorRT
allocates its buffers and picks its kernels for the shape; ONNX Runtime and
torch on the CPU allocate their arenas. The first real study then pays none of it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np

from models.backends.base import LoadedModel


def warm_up(model: LoadedModel, batch_sizes: Iterable[int]) -> dict[int, float]:
    """Run one batch of each size through the model.

    Parameters
    ----------
    model : LoadedModel
        A loaded model; its input contract applies (the batch is the middle of
        ``input.value_range``).
    batch_sizes : iterable of int
        Sizes to run, e.g. ``options.batch_sizes``.

    Returns
    -------
    dict of int to float
        Seconds each size took (compile and capture included), by batch size.

    Raises
    ------
    InferenceError
        If the backend fails.
    """
    low, high = model.manifest.input.value_range
    seconds: dict[int, float] = {}
    for size in sorted(set(batch_sizes)):
        batch = np.full((size, *model.manifest.input.shape), (low + high) / 2, np.float32)
        start = time.perf_counter()
        model.raw(batch)
        seconds[size] = time.perf_counter() - start
    return seconds
