"""Backends on the CPU: threads, precisions, auto order, padding, warm-up, what is reported."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from dicom_node.core.errors import BackendUnavailableError
from models.backends import (
    BackendOptions,
    LoadedModel,
    auto_order,
    builtin_backends,
    load_model,
    warm_up,
)
from models.backends.base import padded_size, resolve_precision, run_padded
from models.manifest import Manifest
from models.weights import UNTRAINED_NOTICE, WeightsInfo

CPU = BackendOptions(device="cpu")


def _batch(n: int, seed: int = 0) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).uniform(-1024, 1024, (n, 1, 224, 224)).astype(np.float32)


def test_onnxruntime_threads_come_from_the_options(
    manifest: Manifest, demo_weights: WeightsInfo, models_dir: Path
) -> None:
    one = load_model(manifest, demo_weights, models_dir, "onnxruntime",
                     options=BackendOptions(device="cpu", threads=1))
    runner: Any = one.runner
    assert runner.session.get_session_options().intra_op_num_threads == 1
    cores = load_model(manifest, demo_weights, models_dir, "onnxruntime", options=CPU)
    expected = len(os.sched_getaffinity(0))
    assert cores.runner.session.get_session_options().intra_op_num_threads == expected
    assert (cores.backend, cores.precision, cores.device) == ("onnxruntime", "fp32", "cpu")
    assert cores.engine_key.endswith(".onnx") and cores.engine_key.startswith(manifest.id)
    assert cores.algorithm == f"onnxruntime fp32 on cpu, engine {cores.engine_key}"


def test_torch_fp32_and_bf16_on_the_cpu_agree_with_onnxruntime_within_tolerance(
    manifest: Manifest, demo_weights: WeightsInfo, models_dir: Path
) -> None:
    import torch

    batch = _batch(3, seed=1)
    ort = load_model(manifest, demo_weights, models_dir, "onnxruntime", options=CPU)
    fp32 = load_model(manifest, demo_weights, models_dir, "torch",
                      options=BackendOptions(device="cpu", threads=1))
    assert torch.get_num_threads() == 1
    assert (fp32.precision, fp32.device, fp32.engine_key) == ("fp32", "cpu", "")
    assert fp32.algorithm == "torch fp32 on cpu"
    reference = ort.predict(batch)
    tolerance = manifest.serving.tolerance
    assert float(np.abs(fp32.predict(batch) - reference).max()) <= tolerance.fp32
    bf16 = load_model(manifest, demo_weights, models_dir, "torch",
                      options=BackendOptions(device="cpu", precision="bf16"))
    assert bf16.precision == "bf16"
    diff = float(np.abs(bf16.predict(batch) - reference).max())
    assert 0 < diff <= tolerance.bf16  # bf16 really ran (not bit-identical), within bounds


def test_precisions_a_backend_cannot_run_are_unavailable(
    manifest: Manifest, demo_weights: WeightsInfo, models_dir: Path
) -> None:
    assert resolve_precision("auto", "cuda") == "fp16"
    assert resolve_precision("auto", "cpu") == "fp32"
    with pytest.raises(BackendUnavailableError, match="fp32 or bf16, not fp16"):
        load_model(manifest, demo_weights, models_dir, "torch",
                   options=BackendOptions(device="cpu", precision="fp16"))
    with pytest.raises(BackendUnavailableError, match="fp32 export only, not fp16"):
        load_model(manifest, demo_weights, models_dir, "onnxruntime",
                   options=BackendOptions(device="cpu", precision="fp16"))


class _FakeRunner:
    """FAKE runner: zeros, named after the loader that made it."""

    device, precision, engine_key = "cpu", "fp32", ""

    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return np.zeros((batch.shape[0], 18), np.float32)


def _fake_table(tried: list[str]) -> dict[str, Any]:
    def unavailable(*_: Any) -> Any:
        tried.append("tensorrt")
        raise BackendUnavailableError("TensorRT is not installed (FAKE)")

    def loader(name: str) -> Any:
        def load(*_: Any) -> _FakeRunner:
            tried.append(name)
            return _FakeRunner(name)

        return load

    return {"tensorrt": unavailable, "torch": loader("torch"), "onnxruntime": loader("onnxruntime")}


def test_auto_order_per_device(
    manifest: Manifest, demo_weights: WeightsInfo, models_dir: Path
) -> None:
    assert auto_order("cuda") == ("tensorrt", "torch", "onnxruntime")
    assert auto_order("cpu") == ("onnxruntime", "torch")
    tried: list[str] = []
    gpu = load_model(manifest, demo_weights, models_dir, backends=_fake_table(tried),
                     options=BackendOptions(device="cuda"))
    assert gpu.backend == "torch" and tried == ["tensorrt", "torch"]
    tried.clear()
    cpu = load_model(manifest, demo_weights, models_dir, backends=_fake_table(tried),
                     options=CPU)
    assert cpu.backend == "onnxruntime" and tried == ["onnxruntime"]
    assert sorted(builtin_backends()) == ["onnxruntime", "tensorrt", "torch"]


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here"
)
def test_explicit_tensorrt_is_unavailable_here_with_the_reason(
    manifest: Manifest, demo_weights: WeightsInfo, models_dir: Path
) -> None:
    with pytest.raises(BackendUnavailableError, match=r"TensorRT is not installed \("):
        load_model(manifest, demo_weights, models_dir, "tensorrt")


def test_padding_to_warmed_batch_sizes_returns_only_the_real_rows() -> None:
    sizes = (1, 8, 32)
    assert [padded_size(n, sizes) for n in (1, 2, 8, 9, 32, 40)] == [1, 8, 8, 32, 32, 32]
    seen: list[int] = []

    def row_ids(chunk: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        assert chunk.shape[0] in sizes
        seen.append(chunk.shape[0])
        return chunk[:, :1].copy()  # each row's first value: its id (padding rows are 0)

    batch = np.arange(1, 41, dtype=np.float32)[:, None].repeat(3, axis=1)
    out = run_padded(batch, sizes, row_ids)
    assert seen == [32, 8]
    np.testing.assert_array_equal(out[:, 0], np.arange(1, 41))
    assert run_padded(batch[:5], sizes, row_ids).shape == (5, 1) and seen[-1] == 8


def test_warm_up_runs_every_size_and_the_load_line_says_what_runs(
    manifest: Manifest,
    demo_weights: WeightsInfo,
    models_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "models.backends")
    model = load_model(manifest, demo_weights, models_dir, options=CPU)
    (line,) = [r.getMessage() for r in caplog.records if "loaded" in r.getMessage()]
    assert f"model {manifest.id} loaded: backend=onnxruntime precision=fp32 device=cpu" in line
    assert f"engine={model.engine_key}" in line and line.endswith(UNTRAINED_NOTICE)
    calls: list[int] = []

    class Counting(_FakeRunner):
        def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
            calls.append(batch.shape[0])
            return super().run(batch)

    fake = LoadedModel(manifest, demo_weights, Counting("fake"))
    seconds = warm_up(fake, (8, 1, 8, 2))
    assert calls == [1, 2, 8] and sorted(seconds) == [1, 2, 8]
    assert all(s >= 0 for s in seconds.values())
    assert set(warm_up(model, (1, 2))) == {1, 2}
