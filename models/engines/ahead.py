"""Ahead-of-time builds (``dicom-node models build``): engines made before workers start.

Always the ONNX export (what ONNX Runtime runs and TensorRT parses); TensorRT
engines when TensorRT and a GPU are there, else one line saying TensorRT is
missing and what ``auto`` will use instead; torch on CUDA is compiled and its
CUDA graphs captured to check that it works (both live in the process: each
worker does it again at start-up, in its warm-up).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from dicom_node.core.errors import BackendUnavailableError
from models.backends.base import BackendOptions, resolve_device, resolve_precision
from models.manifest import Manifest
from models.weights import WeightsInfo

BUILD_CHOICES = ("auto", "tensorrt", "torch", "onnxruntime", "all")


def fallback_description(options: BackendOptions) -> str:
    """What ``auto`` uses when TensorRT is unavailable: ``"torch fp16 on cuda"``..."""
    device = resolve_device(options.device)
    if device == "cuda":
        return f"torch {resolve_precision(options.precision, device)} on cuda"
    return "onnxruntime fp32 on cpu"


def build_ahead(
    manifest: Manifest,
    weights: WeightsInfo,
    models_dir: Path,
    backend: str = "auto",
    options: BackendOptions | None = None,
) -> tuple[list[str], bool]:
    """Build what ``backend`` needs for one model.

    Parameters
    ----------
    manifest, weights, models_dir
        The model, its installed weights and the engine cache root.
    backend : {"auto", "tensorrt", "torch", "onnxruntime", "all"}
        ``auto``: ONNX, and TensorRT when available; ``all``: every backend that
        is available here; a key: that backend (ONNX always).
    options : BackendOptions
        Precision, device, batch sizes, workspace, calibration folder.

    Returns
    -------
    (list of str, bool)
        One line per artefact for the operator; False when the backend asked for
        explicitly could not be built (``tensorrt`` without TensorRT or a GPU).

    Raises
    ------
    InferenceError
        ONNX export failures, TensorRT parser/build errors (EngineError).
    """
    from models.engines import build_onnx_engine

    opts = options or BackendOptions()
    lines: list[str] = []
    ok = True
    onnx_path = build_onnx_engine(manifest, weights, models_dir)
    lines.append(f"{manifest.id}: ONNX engine {onnx_path}")
    if backend in ("auto", "tensorrt", "all"):
        line, built = _tensorrt(manifest, onnx_path, models_dir, opts)
        lines.append(line)
        ok = built or backend != "tensorrt"
    if backend in ("torch", "all") or (backend == "auto" and resolve_device(opts.device) == "cuda"):
        lines.append(_torch(manifest, weights, models_dir, opts))
    if backend in ("onnxruntime", "all"):
        from models.backends import load_model

        model = load_model(manifest, weights, models_dir, "onnxruntime",
                           options=replace(opts, precision="fp32"))
        lines.append(f"{manifest.id}: onnxruntime session opens ({model.algorithm})")
    return lines, ok


def _tensorrt(
    manifest: Manifest, onnx_path: Path, models_dir: Path, opts: BackendOptions
) -> tuple[str, bool]:
    from models.engines.tensorrt_build import ensure_engine, import_tensorrt

    try:
        trt = import_tensorrt()
        device = resolve_device(opts.device)
        if device != "cuda":
            raise BackendUnavailableError("TensorRT needs a CUDA device (device is cpu)")
        precision = resolve_precision(opts.precision, device)
        key = ensure_engine(trt, manifest, onnx_path, models_dir, precision, opts)
    except BackendUnavailableError as exc:
        return (
            f"{manifest.id}: TensorRT engine not built: {exc}; "
            f"backend auto will use {fallback_description(opts)}",
            False,
        )
    return (f"{manifest.id}: TensorRT {key.precision} engine {key.plan_path(models_dir)} "
            f"(max batch {key.max_batch}, {key.gpu_name}, TensorRT {key.tensorrt_version})", True)


def _torch(manifest: Manifest, weights: WeightsInfo, models_dir: Path, opts: BackendOptions) -> str:
    from models.backends import load_model, warm_up

    if resolve_device(opts.device) != "cuda":
        return f"{manifest.id}: torch runs eager on cpu: nothing to build ahead"
    try:
        model = load_model(manifest, weights, models_dir, "torch", options=opts)
    except BackendUnavailableError as exc:
        return f"{manifest.id}: torch unavailable: {exc}"
    start = time.perf_counter()
    warm_up(model, opts.batch_sizes)
    return (f"{manifest.id}: {model.algorithm}: warmed batch sizes "
            f"{list(opts.batch_sizes)} in {time.perf_counter() - start:.1f} s")
