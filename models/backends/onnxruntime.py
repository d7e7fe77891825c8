"""ONNX Runtime backend: the cached exported engine, or the imported ONNX file itself.

Execution providers: CUDA first when this onnxruntime build has it, then CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from dicom_node.core.errors import DicomNodeError, InferenceError
from models.architectures import Architecture
from models.backends.base import BackendOptions
from models.manifest import Manifest
from models.weights import WeightsInfo

log = logging.getLogger(__name__)

PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntimeRunner:
    """An ONNX Runtime session over one ``.onnx`` file.

    Parameters
    ----------
    onnx_path : Path
        The graph: input ``input_name`` ``(N, *input.shape)``, output ``output_name`` ``(N, L)``.
    input_name, output_name : str
        From the manifest.
    """

    name = "onnxruntime"
    precision = "fp32"
    engine_key = ""

    def __init__(self, onnx_path: Path, input_name: str, output_name: str) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        providers = [p for p in PREFERRED_PROVIDERS if p in available]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self.device = "cuda" if self.session.get_providers()[0].startswith("CUDA") else "cpu"
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
    InferenceError
        If the engine cannot be built or the session cannot be created.
    """
    from models.engines import build_onnx_engine

    try:
        path = build_onnx_engine(manifest, weights, models_dir, architectures)
        return OnnxRuntimeRunner(path, manifest.input.name, manifest.output.name)
    except InferenceError:
        raise
    except (DicomNodeError, Exception) as exc:
        raise InferenceError(
            f"model {manifest.id}: cannot load ONNX Runtime engine: {exc}"
        ) from exc
