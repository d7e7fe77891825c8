"""PyTorch backend: eager on the CPU; FP16/BF16, channels_last, compile, CUDA graphs on CUDA.

Runs architecture + safetensors weights only (ONNX weights: onnxruntime).

CPU
    FP32 eager (BF16 under ``torch.autocast("cpu")`` when asked), with
    ``torch.set_num_threads(options.threads or the cores this process may use)``.
CUDA
    The model is cast to FP16 (``.half()``) or BF16 (``.to(torch.bfloat16)``),
    weights and inputs in ``channels_last`` (PyTorch tutorial "Channels last
    memory format"); ``options.compile`` wraps it in ``torch.compile`` (Inductor
    kernels, static shapes). One CUDA graph is captured per batch size in
    ``options.batch_sizes`` (``torch.cuda.graph``, PyTorch docs "CUDA Graphs"),
    on first use of that size or in :func:`models.backends.warm_up`; a batch of
    another size is padded to the next captured size and only its real rows are
    returned. Inputs go through a pinned host buffer, copied with
    ``non_blocking=True`` on the runner's own CUDA stream. We capture graphs
    ourselves rather than ``torch.compile(mode="reduce-overhead")``: its graph
    trees are per thread, and the batcher calls from its own thread.
    A compile or capture failure falls back (compiled eager, then plain eager)
    with a warning and the engine key says what runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from dicom_node.core.errors import BackendUnavailableError, InferenceError
from models.architectures import Architecture
from models.backends.base import (
    BackendOptions,
    available_cores,
    resolve_device,
    resolve_precision,
    run_padded,
)
from models.manifest import Manifest
from models.weights import WeightsInfo

log = logging.getLogger(__name__)


class TorchRunner:
    """An eager PyTorch model in eval mode on the CPU.

    Parameters
    ----------
    model : torch.nn.Module
        From :func:`models.engines.build_torch_model` (raw outputs), on the CPU.
    precision : {"fp32", "bf16"}
        BF16 runs under ``torch.autocast("cpu", torch.bfloat16)``.
    threads : int
        ``torch.set_num_threads`` (process-wide); 0: the cores this process may use.
    """

    name = "torch"
    device = "cpu"
    engine_key = ""
    precision: str

    def __init__(self, model: Any, precision: str = "fp32", threads: int = 0) -> None:
        import torch

        self._torch = torch
        self.precision = precision
        self.threads = threads or available_cores()
        torch.set_num_threads(self.threads)
        self.model = model.eval()

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Run the model; see :class:`models.backends.base.Runner`."""
        torch = self._torch
        try:
            x = torch.from_numpy(np.ascontiguousarray(batch, np.float32))
            with torch.inference_mode(), torch.autocast(
                "cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"
            ):
                out = self.model(x)
            return np.asarray(out.float().numpy(), dtype=np.float32)
        except Exception as exc:
            raise InferenceError(f"torch failed: {exc}") from exc


def _cuda_wrapper(torch: Any, model: Any, dtype: Any, channels_last: bool) -> Any:
    """``(N, ...) float32`` on CUDA -> cast (and channels_last) -> model -> ``(N, L) float32``.

    The casts are inside the module so they are part of each captured CUDA graph.
    """

    class _CudaInference(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: Any) -> Any:
            if channels_last:
                x = x.to(dtype=dtype, memory_format=torch.channels_last)
            else:
                x = x.to(dtype=dtype)
            return self.model(x).float()

    return _CudaInference().eval()


class _Graph:
    """One captured CUDA graph: static input/output and pinned host buffers for a batch size."""

    def __init__(self, graph: Any, static_in: Any, static_out: Any, host_in: Any, host_out: Any):
        self.graph, self.static_in, self.static_out = graph, static_in, static_out
        self.host_in, self.host_out = host_in, host_out


class TorchCudaRunner:
    """A PyTorch model on CUDA: reduced precision, channels_last, compile, CUDA graphs.

    Parameters
    ----------
    model : torch.nn.Module
        From :func:`models.engines.build_torch_model`, on the CPU, FP32.
    manifest : Manifest
        Input shape and layout (channels_last applies to NCHW inputs; an NHWC
        input is already channels-last once permuted).
    precision : {"fp32", "fp16", "bf16"}
    options : BackendOptions
        ``batch_sizes`` (one CUDA graph each) and ``compile``.
    use_graphs : bool
        Capture CUDA graphs (False: run the compiled or eager model directly).
    """

    name = "torch"
    device = "cuda"
    precision: str
    engine_key: str

    def __init__(
        self,
        model: Any,
        manifest: Manifest,
        precision: str,
        options: BackendOptions,
        use_graphs: bool = True,
    ) -> None:
        import torch

        self._torch = torch
        self.precision = precision
        self.batch_sizes = tuple(sorted(set(options.batch_sizes)))
        self.input_shape = tuple(manifest.input.shape)
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        nchw = manifest.input.layout == "NCHW"
        model = model.to("cuda").to(dtype=dtype).to(memory_format=torch.channels_last)
        self.eager = _cuda_wrapper(torch, model, dtype, channels_last=nchw)
        self.compiled = options.compile
        self.model: Any = self.eager
        if options.compile:
            try:
                self.model = torch.compile(self.eager, dynamic=False)
            except Exception as exc:  # compile is lazy; this catches a missing backend
                log.warning("torch.compile unavailable (%s): running eager", exc)
                self.compiled = False
        self.use_graphs = use_graphs
        self.stream = torch.cuda.Stream()
        self._graphs: dict[int, _Graph] = {}
        self._lock = threading.Lock()
        self.engine_key = ""
        self._describe()

    def _describe(self) -> None:
        """Set ``engine_key`` to what runs: ``torch-compile-cudagraphs bs 1,8,32``, ... or ""."""
        parts = ["torch"] + (["compile"] if self.compiled else [])
        parts += ["cudagraphs"] if self.use_graphs else []
        sizes = ",".join(str(size) for size in self.batch_sizes)
        suffix = f" bs {sizes}" if self.use_graphs else ""
        self.engine_key = "-".join(parts) + suffix if len(parts) > 1 else ""

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Run the model, padding to a captured batch size; see :class:`Runner`."""
        try:
            if self.use_graphs:
                return run_padded(batch, self.batch_sizes, self._run_graph)
            return self._run_direct(batch)
        except InferenceError:
            raise
        except Exception as exc:
            raise InferenceError(f"torch (cuda) failed: {exc}") from exc

    def warm(self, batch_size: int) -> None:
        """Compile and capture the graph for ``batch_size`` now (else on first use)."""
        zeros = np.zeros((batch_size, *self.input_shape), np.float32)
        self.run(zeros)

    def _run_direct(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        torch = self._torch
        with self._lock, torch.cuda.stream(self.stream), torch.inference_mode():
            host = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).pin_memory()
            x = host.to("cuda", non_blocking=True)
            out = self._call_with_fallback(x)
            result = out.to("cpu", non_blocking=True)
            self.stream.synchronize()
        return np.asarray(result.numpy(), dtype=np.float32)

    def _call_with_fallback(self, x: Any) -> Any:
        try:
            return self.model(x)
        except Exception as exc:
            if self.model is self.eager:
                raise
            log.warning("torch.compile failed (%s): falling back to eager", exc)
            self.model, self.compiled = self.eager, False
            self._describe()
            return self.model(x)

    def _run_graph(self, chunk: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        torch = self._torch
        with self._lock:
            graph = self._graphs.get(chunk.shape[0]) or self._capture(chunk.shape[0])
            if graph is not None:
                with torch.cuda.stream(self.stream):
                    graph.host_in.numpy()[...] = chunk
                    graph.static_in.copy_(graph.host_in, non_blocking=True)
                    graph.graph.replay()
                    graph.host_out.copy_(graph.static_out, non_blocking=True)
                    self.stream.synchronize()
                return np.array(graph.host_out.numpy(), dtype=np.float32)
        return self._run_direct(chunk)  # capture failed: graphs are off from now on

    def _capture(self, size: int) -> _Graph | None:
        """Warm up (compiling) on a side stream, then capture one CUDA graph for ``size``."""
        torch = self._torch
        shape = (size, *self.input_shape)
        static_in = torch.zeros(shape, device="cuda")
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.no_grad():
                for _ in range(3):
                    self._call_with_fallback(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.no_grad(), torch.cuda.graph(graph):
                static_out = self.model(static_in)
        except Exception as exc:
            log.warning("CUDA graph capture failed for batch %d (%s): running without graphs",
                        size, exc)
            self.use_graphs = False
            self._describe()
            return None
        host_in = torch.empty(shape, dtype=torch.float32, pin_memory=True)
        host_out = torch.empty(tuple(static_out.shape), dtype=torch.float32, pin_memory=True)
        captured = _Graph(graph, static_in, static_out, host_in, host_out)
        self._graphs[size] = captured
        return captured


def load_torch(
    manifest: Manifest,
    weights: WeightsInfo,
    models_dir: Path,
    architectures: Mapping[str, Architecture] | None = None,
    options: BackendOptions | None = None,
) -> TorchRunner | TorchCudaRunner:
    """Build the network with its weights, for the device and precision in ``options``.

    Raises
    ------
    BackendUnavailableError
        CUDA asked for and absent; FP16 or INT8 on the CPU; INT8 on CUDA (TensorRT
        does INT8); ONNX weights (torch cannot run them).
    InferenceError
        If the weights do not load.
    """
    from models.engines import build_torch_model

    opts = options or BackendOptions()
    if weights.format == "onnx" or manifest.architecture is None:
        raise BackendUnavailableError(
            f"model {manifest.id}: the torch backend cannot run ONNX weights; "
            "use backend onnxruntime (or auto)"
        )
    device = resolve_device(opts.device)
    precision = resolve_precision(opts.precision, device)
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailableError("torch sees no CUDA device")
        if precision == "int8":
            raise BackendUnavailableError("torch does not run int8 here (TensorRT does)")
    elif precision not in ("fp32", "bf16"):
        raise BackendUnavailableError(f"torch on the CPU runs fp32 or bf16, not {precision}")
    try:
        model = build_torch_model(manifest, weights, architectures)
        if device == "cuda":
            return TorchCudaRunner(model, manifest, precision, opts)
        return TorchRunner(model, precision, opts.threads)
    except Exception as exc:
        raise InferenceError(f"model {manifest.id}: cannot load the torch model: {exc}") from exc
