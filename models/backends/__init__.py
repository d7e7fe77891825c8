"""Inference backends behind one interface, looked up by key.

Keys: ``onnxruntime`` (cached ONNX export, or the imported ONNX file; CUDA
execution provider first) and ``torch`` (eager, CUDA when available).
``auto`` tries them in :data:`AUTO_ORDER`. Every backend returns raw
outputs; :class:`LoadedModel` checks the input contract before and applies the
manifest's activation after.

TensorRT: a later issue. It goes in ``models/backends/tensorrt.py`` as a
``load_tensorrt`` loader (engine built by :mod:`models.engines` from the ONNX
export, cached by GPU, compute capability, TensorRT version and ONNX sha256),
registered under the key ``"tensorrt"`` in :func:`builtin_backends` and put
first in :data:`AUTO_ORDER` when a GPU is present. Not implemented here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from dicom_node.core.errors import InferenceError
from models.architectures import Architecture
from models.backends.base import (
    BackendLoader,
    BackendOptions,
    LoadedModel,
    Precision,
    Runner,
    apply_activation,
)
from models.manifest import Manifest
from models.weights import UNTRAINED_NOTICE, WeightsInfo

log = logging.getLogger(__name__)

BackendName = Literal["auto", "onnxruntime", "torch"]
AUTO_ORDER = ("onnxruntime", "torch")  # "tensorrt" first, once it exists (later issue)

__all__ = [
    "AUTO_ORDER",
    "BackendLoader",
    "BackendName",
    "BackendOptions",
    "LoadedModel",
    "Precision",
    "Runner",
    "apply_activation",
    "builtin_backends",
    "load_model",
]


def builtin_backends() -> dict[str, BackendLoader]:
    """A fresh table of the shipped backend loaders, by key.

    Returns
    -------
    dict of str to BackendLoader
        ``onnxruntime`` and ``torch``. (``tensorrt``: a later issue, see the module docstring.)
    """
    from models.backends.onnxruntime import load_onnxruntime
    from models.backends.torch import load_torch

    return {"onnxruntime": load_onnxruntime, "torch": load_torch}


def load_model(
    manifest: Manifest,
    weights: WeightsInfo,
    models_dir: Path,
    backend: str = "auto",
    *,
    backends: Mapping[str, BackendLoader] | None = None,
    architectures: Mapping[str, Architecture] | None = None,
    options: BackendOptions | None = None,
) -> LoadedModel:
    """Load a model with the requested backend.

    Parameters
    ----------
    manifest : Manifest
        The model.
    weights : WeightsInfo
        From :func:`models.weights.resolve_weights`.
    models_dir : Path
        Root of installed weights and the engine cache.
    backend : str
        A backend key, or ``auto``: the first of :data:`AUTO_ORDER` that loads
        (ONNX Runtime, else PyTorch; ONNX weights run on ONNX Runtime only).
    backends, architectures : mapping, optional
        Factory tables (default: the built-in ones; a registry passes its own).
    options : BackendOptions, optional
        Precision, device, threads and batch sizes (default: ``BackendOptions()``).

    Returns
    -------
    LoadedModel

    Raises
    ------
    InferenceError
        If the backend is unknown or cannot load the model (``auto``: none can;
        the text gives each one's reason).
    """
    table = builtin_backends() if backends is None else backends
    opts = options or BackendOptions()
    if backend == "auto":
        order = [key for key in AUTO_ORDER if key in table]
    elif backend in table:
        order = [backend]
    else:
        raise InferenceError(f"unknown backend {backend!r}; known: {sorted(table)} and auto")
    failures: list[str] = []
    runner: Runner | None = None
    for key in order:
        try:
            runner = table[key](manifest, weights, models_dir, architectures, opts)
            break
        except InferenceError as exc:
            if backend != "auto":
                raise
            log.warning("model %s: backend %s unavailable: %s", manifest.id, key, exc)
            failures.append(f"{key}: {exc}")
    if runner is None:
        raise InferenceError(
            f"model {manifest.id}: no backend could load it ({'; '.join(failures)})"
        )
    log.info(
        "model %s loaded: backend=%s device=%s weights=%s sha256=%s%s",
        manifest.id,
        runner.name,
        runner.device,
        weights.kind,
        weights.sha256[:16],
        "" if weights.is_real else f" {UNTRAINED_NOTICE}",
    )
    return LoadedModel(manifest, weights, runner)
