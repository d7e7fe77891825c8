"""Backends on CUDA: FP16/BF16, channels_last, torch.compile + CUDA graphs, ORT's CUDA provider.

Skipped without a GPU (CI has none); run on the GPU machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

from models.backends import BackendOptions, load_model, warm_up
from models.manifest import Manifest
from models.weights import WeightsInfo

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)"
)


def _batch(n: int) -> npt.NDArray[np.float32]:
    return np.random.default_rng(7).uniform(-1024, 1024, (n, 1, 224, 224)).astype(np.float32)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("compile_", [True, False])
def test_reduced_precision_graphs_agree_with_fp32(
    manifest: Manifest,
    demo_weights: WeightsInfo,
    models_dir: Path,
    precision: str,
    compile_: bool,
) -> None:
    reference = load_model(manifest, demo_weights, models_dir, "torch",
                           options=BackendOptions(device="cpu", precision="fp32"))
    options = BackendOptions(device="cuda", precision=precision,  # type: ignore[arg-type]
                             batch_sizes=(1, 8), compile=compile_)
    model = load_model(manifest, demo_weights, models_dir, "torch", options=options)
    assert (model.device, model.precision) == ("cuda", precision)
    seconds = warm_up(model, options.batch_sizes)
    assert sorted(seconds) == [1, 8]
    expected = "torch-compile-cudagraphs bs 1,8" if compile_ else "torch-cudagraphs bs 1,8"
    assert model.engine_key == expected  # no fallback happened
    batch = _batch(5)  # padded to 8; only the 5 real rows come back
    scores = model.predict(batch)
    assert scores.shape == (5, 18)
    diff = float(np.abs(scores - reference.predict(batch)).max())
    assert diff <= manifest.serving.tolerance.for_precision(precision)
    # A graph replay gives the same rows whatever else is in the batch.
    np.testing.assert_allclose(model.predict(batch[:1]), scores[:1], atol=1e-6, rtol=0)
    nine = model.predict(_batch(9))  # 8 + 1: two graphs
    assert nine.shape == (9, 18)
    np.testing.assert_allclose(nine[:5], scores, atol=1e-6, rtol=0)


def test_auto_on_cuda_is_fp16_and_never_onnxruntime_first(
    manifest: Manifest, demo_weights: WeightsInfo, models_dir: Path
) -> None:
    model = load_model(manifest, demo_weights, models_dir,
                       options=BackendOptions(batch_sizes=(1,), compile=False))
    assert model.device == "cuda" and model.backend in ("tensorrt", "torch")
    assert model.precision == "fp16"


def test_onnxruntime_cuda_execution_provider(
    manifest: Manifest, demo_weights: WeightsInfo, models_dir: Path
) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed (no CUDAExecutionProvider)")
    model = load_model(manifest, demo_weights, models_dir, "onnxruntime",
                       options=BackendOptions(device="cuda"))
    reference = load_model(manifest, demo_weights, models_dir, "onnxruntime",
                           options=BackendOptions(device="cpu"))
    assert model.device == "cuda"
    batch = _batch(3)
    np.testing.assert_allclose(model.predict(batch), reference.predict(batch), atol=1e-4, rtol=0)
