"""TensorRT backend: a cached engine for this GPU, run with ``execute_async_v3`` on a CUDA stream.

The engine is built (once per host) from the ONNX export by
:mod:`models.engines.tensorrt_build` and is never loaded when its sidecar names
another GPU, compute capability, TensorRT version, ONNX graph or precision.
Per call (TensorRT developer guide, "Performing inference"): ``set_input_shape``
within the optimization profile, ``set_tensor_address`` for every I/O tensor
(torch CUDA tensors as device buffers), host-to-device and device-to-host
copies through pinned host buffers (``torch.empty(..., pin_memory=True)``) on the
runner's ``torch.cuda.Stream``, ``execute_async_v3(stream.cuda_stream)`` and a
stream synchronize. Buffers are kept per batch size in ``options.batch_sizes``;
other sizes are padded to the next one.

When ``import tensorrt`` fails or there is no CUDA device, the loader raises
:class:`~dicom_node.core.errors.BackendUnavailableError` (``auto`` falls back to
torch, then onnxruntime). TensorRT cannot be installed where this project is
tested: this path is not run in CI.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from dicom_node.core.errors import BackendUnavailableError, EngineError, InferenceError
from models.architectures import Architecture
from models.backends.base import BackendOptions, resolve_device, resolve_precision, run_padded
from models.engines.keys import EngineKey
from models.manifest import Manifest
from models.weights import WeightsInfo

log = logging.getLogger(__name__)


class _Buffers:
    """Device and pinned host buffers for one batch size."""

    def __init__(self, host_in: Any, dev_in: Any, dev_out: Any, host_out: Any) -> None:
        self.host_in, self.dev_in, self.dev_out, self.host_out = host_in, dev_in, dev_out, host_out


class TensorRTRunner:
    """An execution context over one deserialized engine.

    Parameters
    ----------
    trt : module
        ``tensorrt``.
    runtime, engine : tensorrt.Runtime, tensorrt.ICudaEngine
        From :func:`models.engines.tensorrt_build.deserialize_engine`.
    key : EngineKey
        The engine's key (``engine_key`` is its first 16 hex digits).
    input_name, output_name : str
        The manifest's tensor names (the engine's I/O tensors).
    input_shape : tuple of int
        Per-image shape ``input.shape``.
    batch_sizes : tuple of int
        Sizes buffers are kept for (all within the profile's max batch).

    Raises
    ------
    EngineError
        If the engine lacks the manifest's tensors.
    """

    name = "tensorrt"
    device = "cuda"

    def __init__(
        self,
        trt: Any,
        runtime: Any,
        engine: Any,
        key: EngineKey,
        input_name: str,
        output_name: str,
        input_shape: tuple[int, ...],
        batch_sizes: tuple[int, ...],
    ) -> None:
        import torch

        self._torch = torch
        self._trt = trt
        self.runtime, self.engine = runtime, engine
        self.key = key
        self.precision = key.precision
        self.engine_key = key.short
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        missing = [name for name in (input_name, output_name) if name not in names]
        if missing:
            raise EngineError(f"engine {key.short} has no tensor(s) {missing}; it has {names}")
        self.input_name, self.output_name = input_name, output_name
        self.input_shape = input_shape
        self.batch_sizes = tuple(sorted(size for size in set(batch_sizes) if size <= key.max_batch))
        if not self.batch_sizes:
            self.batch_sizes = (key.max_batch,)
        self.context = engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self._buffers: dict[int, _Buffers] = {}
        self._lock = threading.Lock()

    def _dtype(self, name: str) -> Any:
        torch, trt = self._torch, self._trt
        table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
        dtype = self.engine.get_tensor_dtype(name)
        if dtype not in table:
            raise EngineError(f"engine {self.engine_key}: tensor {name} has type {dtype}")
        return table[dtype]

    def _buffers_for(self, size: int) -> _Buffers:
        if size not in self._buffers:
            torch = self._torch
            shape = (size, *self.input_shape)
            self.context.set_input_shape(self.input_name, shape)
            out_shape = tuple(self.context.get_tensor_shape(self.output_name))
            in_type, out_type = self._dtype(self.input_name), self._dtype(self.output_name)
            self._buffers[size] = _Buffers(
                host_in=torch.empty(shape, dtype=in_type, pin_memory=True),
                dev_in=torch.empty(shape, dtype=in_type, device="cuda"),
                dev_out=torch.empty(out_shape, dtype=out_type, device="cuda"),
                host_out=torch.empty(out_shape, dtype=out_type, pin_memory=True),
            )
        return self._buffers[size]

    def _run_fixed(self, chunk: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        torch = self._torch
        with self._lock:
            buffers = self._buffers_for(chunk.shape[0])
            with torch.cuda.stream(self.stream):
                buffers.host_in.copy_(torch.from_numpy(chunk))
                buffers.dev_in.copy_(buffers.host_in, non_blocking=True)
                self.context.set_input_shape(self.input_name, tuple(chunk.shape))
                self.context.set_tensor_address(self.input_name, int(buffers.dev_in.data_ptr()))
                self.context.set_tensor_address(self.output_name, int(buffers.dev_out.data_ptr()))
                if not self.context.execute_async_v3(self.stream.cuda_stream):
                    raise InferenceError(f"TensorRT engine {self.engine_key}: execution failed")
                buffers.host_out.copy_(buffers.dev_out, non_blocking=True)
                self.stream.synchronize()
            return np.array(buffers.host_out.float().numpy(), dtype=np.float32)

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Run the engine, padding to a buffered batch size; see :class:`Runner`."""
        try:
            return run_padded(np.ascontiguousarray(batch, np.float32), self.batch_sizes,
                              self._run_fixed)
        except InferenceError:
            raise
        except Exception as exc:
            raise InferenceError(f"TensorRT failed: {exc}") from exc

    def warm(self, batch_size: int) -> None:
        """Allocate the buffers for ``batch_size`` and run it once."""
        self.run(np.zeros((batch_size, *self.input_shape), np.float32))


def load_tensorrt(
    manifest: Manifest,
    weights: WeightsInfo,
    models_dir: Path,
    architectures: Mapping[str, Architecture] | None = None,
    options: BackendOptions | None = None,
) -> TensorRTRunner:
    """Build (once per host) or reuse the TensorRT engine and open an execution context.

    Raises
    ------
    BackendUnavailableError
        TensorRT is not installed, there is no CUDA device, or the device asked for is ``cpu``.
    EngineError
        The engine cannot be built or deserialized.
    """
    from models.engines import build_onnx_engine
    from models.engines.tensorrt_build import (
        deserialize_engine,
        ensure_engine,
        import_tensorrt,
        trt_logger,
    )

    opts = options or BackendOptions()
    trt = import_tensorrt()
    device = resolve_device(opts.device)
    if device != "cuda":
        raise BackendUnavailableError("TensorRT needs a CUDA device (device is cpu)")
    precision = resolve_precision(opts.precision, device)
    onnx_path = build_onnx_engine(manifest, weights, models_dir, architectures)
    key = ensure_engine(trt, manifest, onnx_path, models_dir, precision, opts)
    runtime, engine = deserialize_engine(trt, key, models_dir, trt_logger(trt))
    return TensorRTRunner(
        trt,
        runtime,
        engine,
        key,
        manifest.input.name,
        manifest.output.name,
        tuple(manifest.input.shape),
        opts.batch_sizes,
    )
