"""TensorRT engines: cache keys, stale engines never loaded, build steps, timing cache lock.

TensorRT is not installable here, so the build steps run against
``tests/fakes/fake_tensorrt.py`` (a FAKE ``tensorrt`` module). The test that
needs the real library and a GPU is skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from filelock import FileLock

import models.engines.tensorrt_build as tb
from dicom_node.core.errors import BackendUnavailableError, EngineError
from models.backends.base import BackendOptions
from models.engines.calibration import calibration_batches, calibration_images
from models.engines.keys import EngineKey, HostFingerprint, read_sidecar, timing_cache_path
from models.manifest import Manifest
from models.weights import WeightsInfo, sha256_file
from tests.fakes import fake_tensorrt

HOST_A = HostFingerprint("NVIDIA H100 80GB HBM3", "9.0", fake_tensorrt.__version__)
OPTIONS = BackendOptions(precision="fp16", batch_sizes=(1, 8, 32), workspace_mb=256)
NO_TENSORRT = "TensorRT is not installable here (no wheels on the reachable registries)"


@pytest.fixture
def trt(monkeypatch: pytest.MonkeyPatch) -> Any:
    return fake_tensorrt.install(monkeypatch)


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"an ONNX graph (the FAKE parser does not read it)")
    return path


def _key(**changes: Any) -> EngineKey:
    base = EngineKey("m", "GPU A", "9.0", "10.0.0", "a" * 64, "fp16", 32)
    return replace(base, **changes)


def test_the_engine_key_covers_gpu_capability_version_model_precision_and_batch() -> None:
    base = _key()
    changes = {
        "gpu_name": "GPU B",
        "compute_capability": "8.0",
        "tensorrt_version": "10.1.0",
        "onnx_sha256": "b" * 64,
        "precision": "int8",
        "max_batch": 64,
    }
    digests = {base.digest}
    for field, value in changes.items():
        other = _key(**{field: value})
        digests.add(other.digest)
        assert [d.split(":")[0] for d in base.differences(json.loads(other.to_json()))] == [field]
    assert len(digests) == 1 + len(changes)
    assert base.differences(json.loads(base.to_json())) == []
    assert base.plan_path(Path("/m")) == Path(f"/m/engines/tensorrt/m-{base.digest[:16]}.plan")
    assert base.sidecar_path(Path("/m")).suffix == ".json"
    assert HOST_A.slug == "nvidia-h100-80gb-hbm3-sm90-trt10.0.0-FAKE"
    assert timing_cache_path(Path("/m"), HOST_A).name == f"timing-{HOST_A.slug}.cache"


def test_build_steps_run_in_order_and_the_engine_is_reused(
    trt: Any, manifest: Manifest, onnx_file: Path, tmp_path: Path
) -> None:
    models_dir = tmp_path / "models"
    key = tb.ensure_engine(trt, manifest, onnx_file, models_dir, "fp16", OPTIONS, host=HOST_A)
    assert key.onnx_sha256 == sha256_file(onnx_file) and key.max_batch == 32
    assert key.gpu_name == HOST_A.gpu_name and key.precision == "fp16"
    (build,) = trt.BUILDS
    assert build["parsed"] and build["flags"] == ["FP16"]
    assert build["pools"] == {"WORKSPACE": 256 << 20}
    shape = list(manifest.input.shape)
    assert build["profiles"] == [
        {manifest.input.name: [[1, *shape], [32, *shape], [32, *shape]]}
    ]
    plan = key.plan_path(models_dir)
    assert plan.read_bytes().startswith(b"FAKE-PLAN ")
    assert read_sidecar(key.sidecar_path(models_dir)) == json.loads(key.to_json())
    cache = timing_cache_path(models_dir, HOST_A)
    assert json.loads(cache.read_bytes()) == ["tactic-1"]
    # Cached: a second call builds nothing; the plan deserializes.
    assert tb.ensure_engine(trt, manifest, onnx_file, models_dir, "fp16", OPTIONS, HOST_A) == key
    assert len(trt.BUILDS) == 1
    _runtime, engine = tb.deserialize_engine(trt, key, models_dir, tb.trt_logger(trt))
    assert engine.plan == plan.read_bytes() and [plan.read_bytes()] == trt.DESERIALIZED
    # Another precision is another engine; the timing cache keeps both builds' entries.
    bf16 = tb.ensure_engine(trt, manifest, onnx_file, models_dir, "bf16", OPTIONS, HOST_A)
    assert bf16.plan_path(models_dir) != plan and trt.BUILDS[-1]["flags"] == ["BF16"]
    assert json.loads(cache.read_bytes()) == ["tactic-1", "tactic-2"]


@pytest.mark.parametrize(
    "field, value",
    [
        ("gpu_name", "NVIDIA A100-SXM4-80GB"),
        ("compute_capability", "8.0"),
        ("tensorrt_version", "8.6.1"),
        ("onnx_sha256", "0" * 64),
        ("precision", "fp32"),
    ],
)
def test_an_engine_whose_sidecar_names_something_else_is_never_loaded(
    trt: Any,
    manifest: Manifest,
    onnx_file: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    field: str,
    value: str,
) -> None:
    models_dir = tmp_path / "models"
    key = tb.ensure_engine(trt, manifest, onnx_file, models_dir, "fp16", OPTIONS, host=HOST_A)
    # The plan at this host's path claims (in its sidecar) to be for something else.
    sidecar = key.sidecar_path(models_dir)
    fields = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**fields, field: value}))
    caplog.set_level(logging.INFO, "models.engines.tensorrt_build")
    assert tb.read_valid_plan(key, models_dir) is None
    with pytest.raises(EngineError, match="no TensorRT engine for this host"):
        tb.deserialize_engine(trt, key, models_dir, tb.trt_logger(trt))
    assert trt.DESERIALIZED == []
    assert f"{field}: " in caplog.text and "not loaded" in caplog.text
    # Loading rebuilds it for this host.
    tb.ensure_engine(trt, manifest, onnx_file, models_dir, "fp16", OPTIONS, host=HOST_A)
    assert len(trt.BUILDS) == 2 and tb.read_valid_plan(key, models_dir) is not None


def test_an_engine_built_on_another_gpu_is_not_this_hosts_and_the_log_says_why(
    trt: Any, manifest: Manifest, onnx_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    models_dir = tmp_path / "models"
    other_host = HostFingerprint("NVIDIA A100-SXM4-80GB", "8.0", fake_tensorrt.__version__)
    theirs = tb.ensure_engine(trt, manifest, onnx_file, models_dir, "fp16", OPTIONS, other_host)
    caplog.set_level(logging.INFO, "models.engines.tensorrt_build")
    ours = tb.ensure_engine(trt, manifest, onnx_file, models_dir, "fp16", OPTIONS, HOST_A)
    assert ours.digest != theirs.digest and len(trt.BUILDS) == 2
    assert "gpu_name: 'NVIDIA A100-SXM4-80GB' != 'NVIDIA H100 80GB HBM3'" in caplog.text
    assert "compute_capability: '8.0' != '9.0'" in caplog.text


def test_every_parser_error_is_logged_and_raised(
    trt: Any, manifest: Manifest, onnx_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trt.PARSER_ERRORS[:] = ["Unsupported ONNX op: FancyOp", "Invalid shape for input"]
    with pytest.raises(EngineError) as raised:
        tb.ensure_engine(trt, manifest, onnx_file, tmp_path, "fp16", OPTIONS, host=HOST_A)
    assert "[0] Unsupported ONNX op: FancyOp (node 0)" in str(raised.value)
    assert "[1] Invalid shape for input (node 1)" in str(raised.value)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and "error 1 of 2" in errors[0] and "error 2 of 2" in errors[1]
    assert trt.BUILDS == [] and not list(tmp_path.rglob("*.plan"))


def test_build_serialized_network_returning_none_raises_engine_error(
    trt: Any, manifest: Manifest, onnx_file: Path, tmp_path: Path
) -> None:
    trt.BUILD_RETURNS_NONE = True
    with pytest.raises(EngineError, match="build_serialized_network returned None"):
        tb.ensure_engine(trt, manifest, onnx_file, tmp_path, "fp16", OPTIONS, host=HOST_A)
    assert len(trt.BUILDS) == 1 and not list(tmp_path.rglob("*.plan"))


def test_int8_needs_a_calibration_folder(
    trt: Any, manifest: Manifest, onnx_file: Path, tmp_path: Path
) -> None:
    with pytest.raises(EngineError, match="int8_calibration_dir"):
        tb.ensure_engine(trt, manifest, onnx_file, tmp_path, "int8", OPTIONS, host=HOST_A)
    with pytest.raises(BackendUnavailableError, match="cannot build precision 'fp8'"):
        tb.ensure_engine(trt, manifest, onnx_file, tmp_path, "fp8", OPTIONS, host=HOST_A)


def test_the_timing_cache_is_read_and_written_under_its_file_lock(
    trt: Any,
    manifest: Manifest,
    onnx_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[tuple[str, str]] = []

    class RecordingLock(FileLock):
        def __enter__(self) -> RecordingLock:
            super().__enter__()
            events.append(("locked", Path(self.lock_file).name))
            return self

        def __exit__(self, *exc: object) -> None:
            events.append(("unlocked", Path(self.lock_file).name))
            super().__exit__(*exc)  # type: ignore[arg-type]

    real_write = tb.write_durably

    def recording_write(path: Path, data: bytes | memoryview) -> Path:
        events.append(("write", path.name))
        return real_write(path, data)

    monkeypatch.setattr(tb, "FileLock", RecordingLock)
    monkeypatch.setattr(tb, "write_durably", recording_write)
    models_dir = tmp_path / "models"
    tb.ensure_engine(trt, manifest, onnx_file, models_dir, "fp16", OPTIONS, host=HOST_A)
    cache = timing_cache_path(models_dir, HOST_A).name
    lock = cache + ".lock"
    timing = [e for e in events if e[1] in (cache, lock)]
    assert timing == [
        ("locked", lock),  # read before the build
        ("unlocked", lock),
        ("locked", lock),  # merged and written after it
        ("write", cache),
        ("unlocked", lock),
    ]
    # The plan is built under its own lock.
    plan_lock = [e for e in events if e[1].endswith(".plan.lock")]
    assert [e[0] for e in plan_lock] == ["locked", "unlocked"]


def test_missing_tensorrt_is_said_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails
    with pytest.raises(BackendUnavailableError, match=r"^TensorRT is not installed \("):
        tb.import_tensorrt()


def test_calibration_reads_dicom_images_through_the_preprocessor(
    manifest: Manifest, cr_path: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "calibration"
    folder.mkdir()
    (folder / "a.dcm").write_bytes(cr_path.read_bytes())
    (folder / "notes.txt").write_text("not DICOM")
    images = calibration_images(manifest, folder)
    assert len(images) == 1 and images[0].shape == manifest.input.chw
    (batch,) = list(calibration_batches(manifest, images, 4))
    assert batch.shape == (4, *manifest.input.shape) and batch.dtype == np.float32
    with pytest.raises(EngineError, match="no usable image"):
        calibration_images(manifest, folder, limit=0)
    with pytest.raises(EngineError, match="does not exist"):
        calibration_images(manifest, tmp_path / "nowhere")


def _real_tensorrt() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


@pytest.mark.skipif(not _real_tensorrt(), reason=NO_TENSORRT)
def test_a_real_engine_agrees_with_torch(
    manifest: Manifest, demo_weights: WeightsInfo, models_dir: Path
) -> None:  # pragma: no cover - needs TensorRT and a GPU
    from models.backends import load_model

    batch = np.random.default_rng(3).uniform(-1024, 1024, (5, 1, 224, 224)).astype(np.float32)
    trt = load_model(manifest, demo_weights, models_dir, "tensorrt",
                     options=BackendOptions(precision="fp16", device="cuda"))
    ref = load_model(manifest, demo_weights, models_dir, "torch",
                     options=BackendOptions(precision="fp32", device="cpu"))
    assert trt.backend == "tensorrt" and trt.engine_key
    np.testing.assert_allclose(trt.predict(batch), ref.predict(batch),
                               atol=manifest.serving.tolerance.fp16, rtol=0)
