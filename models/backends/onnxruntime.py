"""ONNX Runtime backend: the cached ONNX export, or the imported ONNX file itself.

The CPU default. ``intra_op_num_threads`` is ``options.threads`` or the cores
this process may use (``os.sched_getaffinity``), so a worker given N cores
uses N threads (ONNX Runtime docs, "Thread management"). The CUDA execution
provider is used when this onnxruntime build has it (``onnxruntime-gpu``) and
the device allows. The export is FP32: other precisions are unavailable here
(``auto`` means FP32 for this backend).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from dicom_node.core.errors import BackendUnavailableError, DicomNodeError, InferenceError
from models.architectures import Architecture
from models.backends.base import BackendOptions, available_cores
from models.manifest import Manifest
from models.weights import WeightsInfo

log = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


class OnnxRuntimeRunner:
    """An ONNX Runtime session over one ``.onnx`` file.

    Parameters
    ----------
    onnx_path : Path
        The graph: input ``input_name`` ``(N, *input.shape)``, output ``output_name`` ``(N, L)``.
    input_name, output_name : str
        From the manifest.
    device : {"cpu", "cuda", "auto"}
        ``cuda``: the CUDA execution provider (then CPU for unsupported nodes);
        ``auto``: CUDA when this build has the provider.
    threads : int
        Intra-op threads; 0: the cores this process may use.

    Raises
    ------
    BackendUnavailableError
        ``cuda`` asked for and this onnxruntime has no CUDA execution provider.
    """

    name = "onnxruntime"
    precision = "fp32"

    def __init__(
        self,
        onnx_path: Path,
        input_name: str,
        output_name: str,
        device: str = "auto",
        threads: int = 0,
    ) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        if device == "cuda" and CUDA_PROVIDER not in available:
            raise BackendUnavailableError(
                "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
            )
        use_cuda = device != "cpu" and CUDA_PROVIDER in available
        providers = [CUDA_PROVIDER, CPU_PROVIDER] if use_cuda else [CPU_PROVIDER]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or available_cores()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.threads = options.intra_op_num_threads
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self.device = "cuda" if self.session.get_providers()[0] == CUDA_PROVIDER else "cpu"
        if device == "cuda" and self.device != "cuda":
            raise BackendUnavailableError("onnxruntime could not start its CUDA execution provider")
        self.engine_key = onnx_path.name
        self.input_name = input_name
        self.output_name = output_name

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Run the session; see :class:`models.backends.base.Runner`."""
        try:
            (out,) = self.session.run(
                [self.output_name], {self.input_name: np.ascontiguousarray(batch, np.float32)}
            )
        except Exception as exc:
            raise InferenceError(f"onnxruntime failed: {exc}") from exc
        return np.asarray(out, dtype=np.float32)


def load_onnxruntime(
    manifest: Manifest,
    weights: WeightsInfo,
    models_dir: Path,
    architectures: Mapping[str, Architecture] | None = None,
    options: BackendOptions | None = None,
) -> OnnxRuntimeRunner:
    """Build (once, cached) or reuse the ONNX engine and open a session.

    Raises
    ------
    BackendUnavailableError
        A precision other than fp32 (or ``auto``), or CUDA asked for without
        ``onnxruntime-gpu``.
    InferenceError
        If the engine cannot be built or the session cannot be created.
    """
    from models.engines import build_onnx_engine

    opts = options or BackendOptions()
    if opts.precision not in ("auto", "fp32"):
        raise BackendUnavailableError(
            f"onnxruntime runs the fp32 export only, not {opts.precision}"
        )
    try:
        path = build_onnx_engine(manifest, weights, models_dir, architectures)
        return OnnxRuntimeRunner(
            path, manifest.input.name, manifest.output.name, opts.device, opts.threads
        )
    except InferenceError:
        raise
    except (DicomNodeError, Exception) as exc:
        raise InferenceError(
            f"model {manifest.id}: cannot load ONNX Runtime engine: {exc}"
        ) from exc
