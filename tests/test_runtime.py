"""Backends: ORT and PyTorch agree; the input contract runs first; activation in one place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from pydicom import dcmread

from dicom_node.core.errors import InferenceError, InputContractError
from models.backends import LoadedModel, apply_activation, builtin_backends, load_model
from models.contract import to_batch
from models.engines import onnx_engine_path
from models.manifest import Manifest
from models.preprocessing import Preprocessor
from models.weights import WeightsInfo


def test_onnxruntime_and_torch_agree(
    manifest: Manifest, demo_weights: WeightsInfo, models_dir: Path, cr_path: Path
) -> None:
    image = Preprocessor.from_manifest(manifest).pre(dcmread(cr_path))
    noise = np.random.default_rng(0).uniform(-1024, 1024, (2, 1, 224, 224)).astype(np.float32)
    batch = np.concatenate([to_batch(manifest, [image]), noise])
    ort = load_model(manifest, demo_weights, models_dir, "onnxruntime")
    torch = load_model(manifest, demo_weights, models_dir, "torch")
    assert (ort.backend, torch.backend) == ("onnxruntime", "torch")
    assert (
        ort.device in ("cpu", "cuda") and ort.weights == demo_weights and ort.manifest == manifest
    )
    p_ort, p_torch = ort.predict(batch), torch.predict(batch)
    assert p_ort.shape == (3, 18) and p_ort.dtype == np.float32
    np.testing.assert_allclose(p_ort, p_torch, atol=1e-4, rtol=0)
    # Not saturated: the comparison is meaningful only if outputs vary.
    assert float(p_ort.min()) > 0.01 and float(p_ort.max()) < 0.99
    assert float(np.ptp(p_ort, axis=0).max()) > 1e-3
    # The engine returns raw logits; the sigmoid is applied once, by LoadedModel.
    np.testing.assert_allclose(apply_activation(ort.raw(batch), "sigmoid"), p_ort, rtol=1e-6)


def test_auto_prefers_onnxruntime_and_caches_the_engine(
    manifest: Manifest, demo_weights: WeightsInfo, models_dir: Path
) -> None:
    model = load_model(manifest, demo_weights, models_dir)
    assert model.backend == "onnxruntime"
    engine = onnx_engine_path(manifest, demo_weights, models_dir)
    built = engine.stat().st_mtime_ns
    load_model(manifest, demo_weights, models_dir, "onnxruntime")
    assert engine.stat().st_mtime_ns == built
    assert len(list(engine.parent.glob(f"{manifest.id}-*.onnx"))) == 1


class _Recorder:
    name, device = "recorder", "cpu"

    def __init__(self, out: npt.NDArray[np.float32]) -> None:
        self.out, self.calls = out, 0

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        self.calls += 1
        return self.out


def test_the_input_contract_is_checked_before_the_backend_runs(
    manifest: Manifest, demo_weights: WeightsInfo
) -> None:
    runner = _Recorder(np.zeros((1, 18), np.float32))
    model = LoadedModel(manifest, demo_weights, runner)
    bad_batches: list[npt.NDArray[Any]] = [
        np.zeros((1, 224, 224, 1), np.float32),  # NHWC for an NCHW model
        np.zeros((1, 1, 224, 224), np.float64),
        np.full((1, 1, 224, 224), 5000, np.float32),
    ]
    for bad in bad_batches:
        with pytest.raises(InputContractError):
            model.predict(bad)
    assert runner.calls == 0
    ok = np.zeros((1, 1, 224, 224), np.float32)
    np.testing.assert_allclose(model.predict(ok), 0.5)
    runner.out = np.zeros((1, 17), np.float32)
    with pytest.raises(InferenceError, match=r"returned shape \(1, 17\), expected \(1, 18\)"):
        model.predict(ok)


def test_activations() -> None:
    logits = np.array([[0.0, 2.0, -800.0], [800.0, 0.0, 1.0]], np.float32)
    sig = apply_activation(logits, "sigmoid")
    assert sig.dtype == np.float32 and np.isfinite(sig).all()
    np.testing.assert_allclose(sig[0], [0.5, 1 / (1 + np.exp(-2.0)), 0.0], atol=1e-7)
    soft = apply_activation(logits, "softmax")
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(apply_activation(logits, "none"), logits)


def test_backend_keys(manifest: Manifest, demo_weights: WeightsInfo, models_dir: Path) -> None:
    assert sorted(builtin_backends()) == ["onnxruntime", "tensorrt", "torch"]
    with pytest.raises(InferenceError, match=r"unknown backend 'openvino'"):
        load_model(manifest, demo_weights, models_dir, "openvino")


def test_an_nhwc_manifest_runs_on_both_backends(
    manifest: Manifest, demo_weights: WeightsInfo, models_dir: Path
) -> None:
    spec = manifest.input.model_copy(update={"layout": "NHWC", "shape": (224, 224, 1)})
    nhwc = manifest.model_copy(update={"input": spec})
    batch = np.random.default_rng(2).uniform(-1024, 1024, (2, 224, 224, 1)).astype(np.float32)
    p_ort = load_model(nhwc, demo_weights, models_dir, "onnxruntime").predict(batch)
    p_torch = load_model(nhwc, demo_weights, models_dir, "torch").predict(batch)
    p_nchw = load_model(manifest, demo_weights, models_dir, "torch").predict(
        np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
    )
    np.testing.assert_allclose(p_ort, p_torch, atol=1e-4, rtol=0)
    np.testing.assert_allclose(p_torch, p_nchw, atol=1e-6, rtol=0)
