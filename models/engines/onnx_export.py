"""The ONNX export: installed weights to a cached ``.onnx`` graph.

The graph is run by ONNX Runtime (CPU or CUDA) and is what TensorRT engines are
built from (:mod:`models.engines.tensorrt_build`). The graph
returns RAW outputs (logits): the manifest's activation is applied once, in
numpy, by :mod:`models.backends`. Engines are cached by key so each is built
once per host, under a file lock, and reused by every worker::

    <models_dir>/engines/<model_id>-<weights sha256[:16]>-<io spec hash[:8]>-opset<N>.onnx

Imported ONNX weights are their own engine (no export).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

from dicom_node.core.durable import write_durably
from models.architectures import Architecture, architecture_for
from models.manifest import Manifest
from models.weights import WeightsInfo, load_state_dict

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

ONNX_OPSET = 17


def build_torch_model(
    manifest: Manifest,
    weights: WeightsInfo,
    architectures: Mapping[str, Architecture] | None = None,
) -> nn.Module:
    """Instantiate the network with its weights, in eval mode, on the CPU.

    Returns
    -------
    torch.nn.Module
        ``(N, *input.shape) float32`` in the manifest's layout ->
        ``(N, L) float32`` raw outputs (logits).

    Raises
    ------
    ManifestError
        If the manifest has no architecture or names an unknown one.
    WeightsError
        If the weights are ONNX (no state dict) or unreadable.
    """
    import torch

    model = architecture_for(manifest, architectures).build(manifest)
    model.load_state_dict(load_state_dict(weights), strict=True)
    if manifest.input.layout == "NHWC":
        inner = model

        class _FromNHWC(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = inner

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.model(x.permute(0, 3, 1, 2))

        model = _FromNHWC()
    return model.eval()


def _io_key(manifest: Manifest) -> str:
    """Hash of what the exported graph depends on besides the weights."""
    spec = manifest.input.model_dump_json() + manifest.output.model_dump_json()
    spec += f"{manifest.architecture}{len(manifest.labels)}"
    return hashlib.sha256(spec.encode()).hexdigest()[:8]


def onnx_engine_path(manifest: Manifest, weights: WeightsInfo, models_dir: Path) -> Path:
    """Cache location of the ONNX engine for these weights (the file itself for ONNX weights)."""
    if weights.format == "onnx":
        return Path(weights.path)
    name = f"{manifest.id}-{weights.sha256[:16]}-{_io_key(manifest)}-opset{ONNX_OPSET}.onnx"
    return models_dir / "engines" / name


def build_onnx_engine(
    manifest: Manifest,
    weights: WeightsInfo,
    models_dir: Path,
    architectures: Mapping[str, Architecture] | None = None,
) -> Path:
    """Export the model to ONNX once; later calls return the cached file.

    A file lock makes concurrent workers on one host build it only once; the
    file is written durably and appears under its final name only when complete.

    Returns
    -------
    Path
        The ``.onnx`` file. Input ``input.name`` ``(N, *input.shape) float32``,
        output ``output.name`` ``(N, L) float32`` raw logits; N is dynamic.
    """
    target = onnx_engine_path(manifest, weights, models_dir)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_file():
            return target
        import torch

        model = build_torch_model(manifest, weights, architectures)
        example = torch.zeros(1, *manifest.input.shape)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            tmp_file = Path(tmp) / "model.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model,
                    (example,),
                    str(tmp_file),
                    dynamo=False,
                    input_names=[manifest.input.name],
                    output_names=[manifest.output.name],
                    dynamic_axes={manifest.input.name: {0: "N"}, manifest.output.name: {0: "N"}},
                    opset_version=ONNX_OPSET,
                )
            write_durably(target, tmp_file.read_bytes())
        log.info("model %s: built ONNX engine %s", manifest.id, target.name)
    return target
