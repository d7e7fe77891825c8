"""Bring your own model: an ONNX classifier added by a manifest alone, through `dicom-node up`.

The test builds a small ONNX image classifier itself (seeded, untrained: its
outputs mean nothing clinically) whose contract differs from every shipped
model: NHWC layout, RGB, 150x150, ``x/127.5 - 1`` (Keras "tf" mode), nearest
resize, and a softmax over two classes. A manifest in
``<models_dir>/manifests/`` declares it; `dicom-node models import` records the
ONNX file's sha256; a CR pushed by the AE the manifest routes on comes back as
an SR whose probability equals ONNX Runtime's output on the same input.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom import dcmread
from pydicom.data import get_testdata_file
from torch import nn

from tests.conftest import dciodvfy_errors, free_port, wait_for
from tests.test_e2e import push, start_node, start_pacs, status, stop_node
from workers.outputs.tid1500 import read_findings

pytestmark = pytest.mark.e2e

MODEL_ID = "byo-nhwc-cnn"


class TinyNHWC(nn.Module):
    """A small CNN that takes ``(N, 150, 150, 3)`` and returns 2 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=3), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU()
        )
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv(x.permute(0, 3, 1, 2)).mean(dim=(2, 3))
        return self.head(features)


def build_onnx(path: Path) -> str:
    torch.manual_seed(7)
    model = TinyNHWC().eval()
    torch.onnx.export(
        model,
        (torch.zeros(1, 150, 150, 3),),
        str(path),
        dynamo=False,
        input_names=["input_1"],
        output_names=["logits"],
        dynamic_axes={"input_1": {0: "N"}, "logits": {0: "N"}},
        opset_version=17,
    )
    return hashlib.sha256(path.read_bytes()).hexdigest()


MANIFEST = """\
id: {model_id}
name: Site CNN (test, untrained)
version: "0.1"
task: classification
architecture: null
upstream: built by tests/test_byo_model.py
reference: none (test model)
weights:
  uri: null
  filename: site-cnn.onnx
  sha256: {sha256}
  format: onnx
  license: test
input:
  name: input_1
  layout: NHWC
  shape: [150, 150, 3]
  dtype: float32
  value_range: [-1, 1]
  channels: [R, G, B]
preprocessing:
  - {{step: modality_lut}}
  - {{step: voi_lut}}
  - {{step: invert_monochrome1, reference: voi_range}}
  - {{step: normalize, source: voi_range, to: [0, 255]}}
  - {{step: gray_to_rgb}}
  - {{step: resize, size: [150, 150], engine: pil, interpolation: nearest}}
  - {{step: scale, mode: keras_tf}}
output:
  name: logits
  activation: softmax
aggregation: {{scope: study, reduce: max, slice_order: none}}
labels:
  - name: Abnormal
    threshold: 0.5
    code: {{value: SITE-ABN, scheme: 99DCMNODE, meaning: Abnormal}}
  - name: Normal
    threshold: 0.5
    report: false
    code: {{value: SITE-NORM, scheme: 99DCMNODE, meaning: Normal}}
routing:
  rules:
    - {{modalities: [CR, DX], calling_aes: [SITE_CR]}}
model_card:
  intended_use: Test of the bring-your-own-model path only.
  training_data: none (seeded random weights)
  limitations: Not a medical device; outputs are meaningless.
  subgroup_caveats: none evaluated
  reference: tests/test_byo_model.py
"""


def expected_probability(onnx_file: Path, image: Path, models_dir: Path) -> float:
    """ONNX Runtime on the manifest's preprocessing of ``image``, then softmax."""
    import onnxruntime as ort

    from models.preprocessing import Preprocessor
    from models.registry import ModelRegistry

    manifest = ModelRegistry.load(models_dir / "manifests").get(MODEL_ID)
    chw = Preprocessor.from_manifest(manifest)(dcmread(image))
    nhwc = np.ascontiguousarray(chw.transpose(1, 2, 0)[None], np.float32)
    assert nhwc.shape == (1, 150, 150, 3) and -1.0 <= nhwc.min() < nhwc.max() <= 1.0
    (logits,) = ort.InferenceSession(str(onnx_file)).run(None, {"input_1": nhwc})
    e = np.exp(logits[0] - logits[0].max())
    return float(e[0] / e.sum())


def test_an_onnx_model_added_by_manifest_alone(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    (models_dir / "manifests").mkdir(parents=True)
    onnx_file = tmp_path / "site-cnn.onnx"
    sha256 = build_onnx(onnx_file)
    (models_dir / "manifests" / f"{MODEL_ID}.yaml").write_text(
        MANIFEST.format(model_id=MODEL_ID, sha256=sha256)
    )
    pacs_port, received = free_port(), tmp_path / "pacs"
    pacs = start_pacs(pacs_port, received)
    proc, env = start_node(tmp_path, pacs_port, models_dir, DICOM_NODE_MODELS=MODEL_ID)
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "dicom_node.app.cli",
                "models",
                "import",
                MODEL_ID,
                str(onnx_file),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        assert sha256 in out.stdout

        tibia = Path(get_testdata_file("RG3_UNCR.dcm"))
        push(env["port"], tibia, calling_ae="SITE_CR")
        (sr_file,) = wait_for(lambda: list(received.iterdir()), 120, "the SR")
        sr = dcmread(sr_file)
        (finding,) = read_findings(sr)  # "Normal" is not reported (report: false)
        assert finding.finding == "Abnormal"
        assert finding.probability == pytest.approx(
            expected_probability(onnx_file, tibia, models_dir), abs=2e-6
        )
        assert dciodvfy_errors(sr_file) == []
        study = status(env)[str(sr.StudyInstanceUID)]
        (analysis,) = study["analyses"]  # type: ignore[misc]
        assert analysis["model_id"] == MODEL_ID and analysis["backend"] == "onnxruntime"
        assert analysis["weights_kind"] == "real" and analysis["weights_sha256"] == sha256
    finally:
        stop_node(proc, env)
        pacs.terminate()
        pacs.wait(10)
