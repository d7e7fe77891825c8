from pathlib import Path

import numpy as np
from pydicom import dcmread

from models.manifest import Manifest
from models.preprocessing.xrv import preprocess_xrv
from models.backends.runtime import load_model
from models.weights.store.store import WeightsInfo
from models.preprocessing.pixels import display_image


def test_onnxruntime_and_torch_agree(
    manifest: Manifest, demo_weights: WeightsInfo, models_dir: Path, cr_path: Path
) -> None:
    image = preprocess_xrv(display_image(dcmread(cr_path)))
    noise = np.random.default_rng(0).uniform(-1024, 1024, (2, 1, 224, 224)).astype(np.float32)
    batch = np.concatenate([image, noise])
    ort = load_model(manifest, demo_weights, models_dir, "onnxruntime").classifier
    torch = load_model(manifest, demo_weights, models_dir, "torch").classifier
    assert (ort.backend, torch.backend) == ("onnxruntime", "torch")
    p_ort, p_torch = ort.predict(batch), torch.predict(batch)
    assert p_ort.shape == (3, 18) and p_ort.dtype == np.float32
    np.testing.assert_allclose(p_ort, p_torch, atol=1e-4, rtol=0)
    # Not saturated: the comparison is meaningful only if outputs vary.
    assert float(p_ort.min()) > 0.01 and float(p_ort.max()) < 0.99
    assert float(np.ptp(p_ort, axis=0).max()) > 1e-3
