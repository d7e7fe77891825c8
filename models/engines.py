"""The engine builder: turn converted weights into a runnable, cached engine.

Today it builds an ONNX graph (run by ONNX Runtime on CPU or CUDA). Engines are
cached by key so each is built once per host and reused by every worker:

``<models_dir>/engines/<model_id>-<weights sha256[:16]>-opset<N>.onnx``

The TensorRT engine builder goes here too: parse this ONNX file, build with an
optimization profile over batch size, and cache by GPU name, compute
capability, TensorRT version and ONNX sha256.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import torch
from filelock import FileLock

from dicom_node.core.durable import write_durably
from models.architectures.densenet import DenseNet121, WithSigmoid
from models.manifest import Manifest
from models.weights.store.store import WeightsInfo, load_state_dict

log = logging.getLogger(__name__)

ONNX_OPSET = 17


def build_torch_model(manifest: Manifest, weights: WeightsInfo) -> WithSigmoid:
    """Instantiate the network with its weights, in eval mode, returning probabilities.

    Returns
    -------
    WithSigmoid
        ``(N, 1, 224, 224) float32 -> (N, L) float32`` probabilities on the CPU.
    """
    model = DenseNet121(num_classes=len(manifest.labels))
    model.load_state_dict(load_state_dict(weights), strict=True)
    return WithSigmoid(model).eval()


def onnx_engine_path(manifest: Manifest, weights: WeightsInfo, models_dir: Path) -> Path:
    """Cache location of the ONNX engine for these weights."""
    return models_dir / "engines" / f"{manifest.id}-{weights.sha256[:16]}-opset{ONNX_OPSET}.onnx"


def build_onnx_engine(manifest: Manifest, weights: WeightsInfo, models_dir: Path) -> Path:
    """Export the model to ONNX once; later calls return the cached file.

    A file lock makes concurrent workers on one host build it only once; the
    file is written durably and appears under its final name only when complete.

    Returns
    -------
    Path
        The ``.onnx`` file. Input ``image`` ``(N, 1, H, W) float32``, output
        ``probabilities`` ``(N, L) float32``; N is dynamic.
    """
    target = onnx_engine_path(manifest, weights, models_dir)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_file():
            return target
        model = build_torch_model(manifest, weights)
        channels, height, width = manifest.input.shape
        example = torch.zeros(1, channels, height, width)
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
