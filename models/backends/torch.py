"""PyTorch eager backend, on CUDA when available. Runs architecture + safetensors weights only."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from dicom_node.core.errors import InferenceError
from models.architectures import Architecture
from models.backends.base import BackendOptions
from models.manifest import Manifest
from models.weights import WeightsInfo


class TorchRunner:
    """An eager PyTorch model in eval mode.

    Parameters
    ----------
    model : torch.nn.Module
        From :func:`models.engines.build_torch_model` (raw outputs).
    """

    name = "torch"
    precision = "fp32"
    engine_key = ""

    def __init__(self, model: Any) -> None:
        import torch

        self._torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = model.to(self.device)

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Run the model; see :class:`models.backends.base.Runner`."""
        torch = self._torch
        try:
            with torch.inference_mode():
                out = self.model(
                    torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(self.device)
                )
            return np.asarray(out.float().cpu().numpy(), dtype=np.float32)
        except Exception as exc:
            raise InferenceError(f"torch failed: {exc}") from exc


def load_torch(
    manifest: Manifest,
    weights: WeightsInfo,
    models_dir: Path,
    architectures: Mapping[str, Architecture] | None = None,
    options: BackendOptions | None = None,
) -> TorchRunner:
    """Build the network with its weights.

    Raises
    ------
    InferenceError
        If the weights are an ONNX file (torch cannot run them), the model
        has no architecture, or the weights do not load.
    """
    from models.engines import build_torch_model

    if weights.format == "onnx" or manifest.architecture is None:
        raise InferenceError(
            f"model {manifest.id}: the torch backend cannot run ONNX weights; "
            "use backend onnxruntime (or auto)"
        )
    try:
        return TorchRunner(build_torch_model(manifest, weights, architectures))
    except Exception as exc:
        raise InferenceError(f"model {manifest.id}: cannot load the torch model: {exc}") from exc
