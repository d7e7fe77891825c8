"""Inference backends behind one interface, looked up by key.

Keys: ``tensorrt`` (an engine built for this GPU from the ONNX export; see
:mod:`models.engines.tensorrt_build`), ``torch`` (eager on the CPU; FP16/BF16,
channels_last, torch.compile and CUDA graphs on CUDA) and ``onnxruntime`` (the
ONNX export or an imported ONNX file; CPU, or the CUDA execution provider of
``onnxruntime-gpu``). ``auto`` tries them in :func:`auto_order` for the device:
TensorRT, torch, ONNX Runtime on CUDA; ONNX Runtime, torch on the CPU. A
backend whose library, device or precision is absent raises
:class:`~dicom_node.core.errors.BackendUnavailableError` and ``auto`` moves on.
Every backend returns raw outputs; :class:`LoadedModel` checks the input
contract before and applies the manifest's activation after.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from dicom_node.core.errors import BackendUnavailableError, InferenceError
from models.architectures import Architecture
from models.backends.base import (
    BackendLoader,
    BackendOptions,
    LoadedModel,
    Precision,
    Runner,
    apply_activation,
    resolve_device,
)
from models.backends.warmup import warm_up
from models.manifest import Manifest
from models.weights import UNTRAINED_NOTICE, WeightsInfo

log = logging.getLogger(__name__)

BackendName = Literal["auto", "tensorrt", "onnxruntime", "torch"]
_AUTO_ORDERS: dict[str, tuple[str, ...]] = {
    "cuda": ("tensorrt", "torch", "onnxruntime"),
    "cpu": ("onnxruntime", "torch"),
}
_said: set[tuple[str, str]] = set()

__all__ = [
    "BackendLoader",
    "BackendName",
    "BackendOptions",
    "LoadedModel",
    "Precision",
    "Runner",
    "apply_activation",
    "auto_order",
    "builtin_backends",
    "load_model",
    "warm_up",
]


def auto_order(device: str) -> tuple[str, ...]:
    """The backends ``auto`` tries, in order, on a device.

    Parameters
    ----------
    device : {"cuda", "cpu", "auto"}
        ``auto`` is resolved first (:func:`models.backends.base.resolve_device`).

    Returns
    -------
    tuple of str
        ``("tensorrt", "torch", "onnxruntime")`` on CUDA, ``("onnxruntime", "torch")``
        on the CPU.
    """
    return _AUTO_ORDERS[resolve_device(device)]


def builtin_backends() -> dict[str, BackendLoader]:
    """A fresh table of the shipped backend loaders, by key.

    Returns
    -------
    dict of str to BackendLoader
        ``tensorrt``, ``torch`` and ``onnxruntime``.
    """
    from models.backends.onnxruntime import load_onnxruntime
    from models.backends.tensorrt import load_tensorrt
    from models.backends.torch import load_torch

    return {"tensorrt": load_tensorrt, "torch": load_torch, "onnxruntime": load_onnxruntime}


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
        A backend key, or ``auto``: the first of :func:`auto_order` (for
        ``options.device``) that loads; ONNX weights run on ONNX Runtime only.
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
        order = [key for key in auto_order(opts.device) if key in table]
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
            said = (key, str(exc))
            level = logging.INFO if isinstance(exc, BackendUnavailableError) else logging.WARNING
            log.log(level if said not in _said else logging.DEBUG,
                    "model %s: backend %s unavailable: %s", manifest.id, key, exc)
            _said.add(said)
            failures.append(f"{key}: {exc}")
    if runner is None:
        raise InferenceError(
            f"model {manifest.id}: no backend could load it ({'; '.join(failures)})"
        )
    model = LoadedModel(manifest, weights, runner)
    log.info(
        "model %s loaded: backend=%s precision=%s device=%s engine=%s weights=%s sha256=%s%s",
        manifest.id,
        model.backend,
        model.precision,
        model.device,
        model.engine_key or "eager",
        weights.kind,
        weights.sha256[:16],
        "" if weights.is_real else f" {UNTRAINED_NOTICE}",
    )
    return model
