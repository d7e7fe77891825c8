"""`models verify`: every available backend and precision against the reference outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from pydicom import dcmread

import models.backends
from dicom_node.app.cli import main
from models.backends import BackendOptions
from models.backends.onnxruntime import load_onnxruntime
from models.backends.torch import load_torch
from models.manifest import Manifest
from models.preprocessing import Preprocessor
from models.verify import VerifyRow, reference_inputs, render_rows, verify_backends
from models.weights import WeightsInfo


class FakePerturbedRunner:
    """FAKE backend: ONNX Runtime's raw outputs plus 1.0 (a broken engine)."""

    name, precision, device, engine_key = "perturbed", "fp32", "cpu", "fake"

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return self.inner.run(batch) + np.float32(1.0)


def load_perturbed(manifest: Manifest, weights: WeightsInfo, models_dir: Path,
                   architectures: Any, options: BackendOptions) -> FakePerturbedRunner:
    if options.precision != "fp32":
        from dicom_node.core.errors import BackendUnavailableError

        raise BackendUnavailableError("the FAKE runs fp32 only")
    return FakePerturbedRunner(load_onnxruntime(manifest, weights, models_dir, None, options))


def test_cpu_backends_agree_with_the_reference(
    manifest: Manifest, demo_weights: WeightsInfo, models_dir: Path, cr_path: Path
) -> None:
    image = Preprocessor.from_manifest(manifest).pre(dcmread(cr_path))
    table = {"onnxruntime": load_onnxruntime, "torch": load_torch}
    rows = verify_backends(manifest, demo_weights, models_dir, backends=table,
                           options=BackendOptions(device="cpu"), images=[image],
                           precisions=("fp32", "fp16"))
    by = {(r.backend, r.precision): r for r in rows}
    assert list(by) == [("onnxruntime", "fp32"), ("onnxruntime", "fp16"),
                        ("torch", "fp32"), ("torch", "fp16")]
    for key in [("onnxruntime", "fp32"), ("torch", "fp32")]:
        row = by[key]
        assert row.status == "OK" and row.device == "cpu" and row.max_abs_diff is not None
        assert row.max_abs_diff <= manifest.serving.tolerance.fp32
    assert by[("onnxruntime", "fp16")].status.startswith("unavailable: onnxruntime runs the fp32")
    assert by[("torch", "fp16")].ok and by[("torch", "fp16")].max_abs_diff is None
    assert reference_inputs(manifest, [image]).shape == (9, 1, 224, 224)
    low, high = manifest.input.value_range
    ref = reference_inputs(manifest)
    assert ref.min() >= low and ref.max() <= high
    np.testing.assert_array_equal(ref, reference_inputs(manifest))  # seeded


def test_a_perturbed_backend_fails(
    manifest: Manifest, demo_weights: WeightsInfo, models_dir: Path
) -> None:
    rows = verify_backends(manifest, demo_weights, models_dir,
                           backends={"perturbed": load_perturbed},
                           options=BackendOptions(device="cpu"), precisions=("fp32", "bf16"))
    fp32, bf16 = rows
    assert not fp32.ok and fp32.status.startswith("FAIL: max abs diff")
    assert fp32.max_abs_diff is not None and fp32.max_abs_diff > 0.05
    assert bf16.ok and bf16.status == "unavailable: the FAKE runs fp32 only"
    table = render_rows(rows)
    assert "perturbed  fp32" in table and "FAIL" in table and "unavailable" in table


def test_models_verify_exits_1_on_a_failing_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    models_dir: Path, demo_weights: WeightsInfo,
) -> None:
    monkeypatch.setenv("DICOM_NODE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DICOM_NODE_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("DICOM_NODE_INFERENCE_DEVICE", "cpu")
    monkeypatch.setattr(models.backends, "builtin_backends", lambda: {"perturbed": load_perturbed})
    assert main(["models", "verify", demo_weights.model_id]) == 1
    out = capsys.readouterr().out
    assert "untrained-demo weights" in out and "perturbed  fp32" in out
    assert out.strip().endswith("FAIL (1 failing of 4)")
    monkeypatch.setattr(models.backends, "builtin_backends",
                        lambda: {"onnxruntime": load_onnxruntime})
    assert main(["models", "verify", demo_weights.model_id]) == 0
    assert capsys.readouterr().out.strip().endswith("OK (0 failing of 4)")


def test_row_status() -> None:
    assert VerifyRow("b", "fp16", "cuda", 0.01, 0.02).status == "OK"
    assert VerifyRow("b", "fp16", "cuda", 0.03, 0.02, "max abs diff 0.03 > 0.02").status == (
        "FAIL: max abs diff 0.03 > 0.02"
    )
    assert VerifyRow("b", "fp16", "-", None, 0.02, "boom").status == "FAIL: boom"
    assert VerifyRow("b", "int8", "-", None, 0.1, "no GPU", True).status == "unavailable: no GPU"
