"""Inference backends behind one interface: ONNX Runtime first, PyTorch as fallback.

Both take ``(N, 1, 224, 224) float32`` in [-1024, 1024] and return
``(N, L) float32`` probabilities. Each uses CUDA when the machine has it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from dicom_node.core.errors import InferenceError
from models.engines import build_onnx_engine, build_torch_model
from models.manifest import Manifest
from models.weights.store.store import WeightsInfo

log = logging.getLogger(__name__)

BackendName = Literal["auto", "onnxruntime", "torch"]


class Classifier(Protocol):
    """A loaded classifier."""

    backend: str
    device: str

    def predict(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Probabilities ``(N, L) float32`` for images ``(N, 1, H, W) float32``."""
        ...


class OnnxRuntimeClassifier:
    """ONNX Runtime session over the cached ONNX engine.

    Parameters
    ----------
    onnx_path : Path
        Engine built by :func:`models.engines.build_onnx_engine`.
    """

    backend = "onnxruntime"

    def __init__(self, onnx_path: Path) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self.device = "cuda" if self.session.get_providers()[0].startswith("CUDA") else "cpu"
        self.input_name = self.session.get_inputs()[0].name

    def predict(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Run the session; see :class:`Classifier`."""
        try:
            (out,) = self.session.run(
                None, {self.input_name: np.ascontiguousarray(batch, np.float32)}
            )
        except Exception as exc:
            raise InferenceError(f"onnxruntime failed: {exc}") from exc
        return np.asarray(out, dtype=np.float32)


class TorchClassifier:
    """PyTorch eager model, on CUDA when available."""

    backend = "torch"

    def __init__(self, manifest: Manifest, weights: WeightsInfo) -> None:
        import torch

        self._torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = build_torch_model(manifest, weights).to(self.device)

    def predict(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Run the model; see :class:`Classifier`."""
        torch = self._torch
        try:
            with torch.inference_mode():
                out = self.model(
                    torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(self.device)
                )
            return out.float().cpu().numpy()
        except Exception as exc:
            raise InferenceError(f"torch failed: {exc}") from exc


@dataclass
class LoadedModel:
    """A manifest, its weights and a ready classifier."""

    manifest: Manifest
    weights: WeightsInfo
    classifier: Classifier


def load_model(
    manifest: Manifest, weights: WeightsInfo, models_dir: Path, backend: BackendName = "auto"
) -> LoadedModel:
    """Load a classifier with the requested backend.

    ``auto`` tries ONNX Runtime and falls back to PyTorch if the engine cannot
    be built or loaded.

    Raises
    ------
    InferenceError
        If the requested backend cannot be loaded.
    """
    if backend in ("auto", "onnxruntime"):
        try:
            classifier: Classifier = OnnxRuntimeClassifier(
                build_onnx_engine(manifest, weights, models_dir)
            )
        except Exception as exc:
            if backend == "onnxruntime":
                raise InferenceError(f"cannot load ONNX Runtime engine: {exc}") from exc
            log.warning("model %s: ONNX Runtime unavailable (%s); using PyTorch", manifest.id, exc)
            classifier = TorchClassifier(manifest, weights)
    else:
        classifier = TorchClassifier(manifest, weights)
    log.info(
        "model %s loaded: backend=%s device=%s weights=%s sha256=%s",
        manifest.id,
        classifier.backend,
        classifier.device,
        weights.kind,
        weights.sha256[:16],
    )
    return LoadedModel(manifest, weights, classifier)
