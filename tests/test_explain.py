"""Grad-CAM saliency (Selvaraju et al. 2017, captum) on a real chest CR, with the demo weights.

The explainer is the one the worker builds (:func:`workers.pipeline.explain.explainer_for`)
over a real pipeline run (torch backend, CPU) of pydicom-data's RG1 chest CR
(MONOCHROME1, 1955 x 1841). The map must lie on the source's grid, with the
rows the preprocessing's centre crop removed at zero, be deterministic, depend
on the label, and come with the source rendered as MONOCHROME2. The geometry
inverse is checked against the preprocessing's own crop, pad and resize.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread

from dicom_node.core.errors import ReportError
from models.backends import BackendOptions, LoadedModel, load_model
from models.explain.geometry import trace
from models.explain.layers import target_layer
from models.manifest import Manifest
from models.preprocessing.geometry import center_crop, pad_square
from models.preprocessing.resize import resize_skimage
from models.weights import WeightsInfo
from workers.outputs.findings import Explainer, Saliency
from workers.pipeline.explain import ModelExplainer, explainer_for
from workers.pipeline.order import Image
from workers.pipeline.run import read_images

CROP_TOP = 1955 // 2 - 1841 // 2
"""First row of RG1 (1955 x 1841) inside torchxrayvision's centre crop (``H // 2 - h // 2``)."""


@dataclass(frozen=True)
class Setup:
    model: LoadedModel
    images: list[Image]
    explainer: Explainer

    @property
    def header(self) -> Dataset:
        return self.images[0].header


@pytest.fixture(scope="module")
def setup(
    manifest: Manifest, demo_weights: WeightsInfo, models_dir: Path, cr_path: Path
) -> Iterator[Setup]:
    model = load_model(
        manifest, demo_weights, models_dir, "torch", options=BackendOptions(device="cpu")
    )
    images, skipped = read_images([str(cr_path)])
    assert not skipped
    yield Setup(model, images, explainer_for(model, images))


@pytest.fixture(scope="module")
def atelectasis(setup: Setup) -> Saliency:
    return setup.explainer.explain(setup.header, "Atelectasis")


def test_the_map_lies_on_the_source_grid_in_0_1(setup: Setup, atelectasis: Saliency) -> None:
    heat, image = atelectasis.heat, atelectasis.image
    assert heat.shape == image.shape == (1955, 1841)
    assert heat.dtype == np.float32 and image.dtype == np.uint8
    assert float(heat.min()) >= 0.0 and float(heat.max()) == pytest.approx(1.0, abs=1e-6)
    assert float(heat.std()) > 0.05, "the map is (nearly) constant"
    # the centre crop removed rows above and below: the model never saw them
    assert float(heat[:CROP_TOP].max()) == 0.0 and float(heat[CROP_TOP + 1841 :].max()) == 0.0
    assert float(heat[CROP_TOP : CROP_TOP + 1841].min()) < 0.5 < float(heat[CROP_TOP:].max())
    assert "Grad-CAM" in atelectasis.method and "features.norm5" in atelectasis.method
    assert "Atelectasis" in atelectasis.method and "approximate" not in atelectasis.method


def test_the_map_is_deterministic_and_depends_on_the_label(
    setup: Setup, atelectasis: Saliency
) -> None:
    again = setup.explainer.explain(setup.header, "Atelectasis")
    assert np.array_equal(again.heat, atelectasis.heat)
    assert np.array_equal(again.image, atelectasis.image)
    other = setup.explainer.explain(setup.header, "Cardiomegaly")
    assert other.heat.shape == atelectasis.heat.shape
    assert float(np.abs(other.heat - atelectasis.heat).mean()) > 0.02


def test_the_display_image_is_monochrome2(setup: Setup, atelectasis: Saliency) -> None:
    """RG1 is MONOCHROME1 (bright = low values): the display image is its inverse, windowed."""
    stored = dcmread(setup.images[0].path).pixel_array.astype(np.float64)
    r = np.corrcoef(stored.ravel()[::97], atelectasis.image.astype(np.float64).ravel()[::97])[0, 1]
    assert r < -0.9
    # windowed with the instance's VOI (centre 15000, width 30000), not stretched
    assert int(atelectasis.image.min()) < 64 and int(atelectasis.image.max()) > 192


def test_concurrent_explanations_match_serial_ones(setup: Setup, atelectasis: Saliency) -> None:
    results: list[Saliency] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(setup.explainer.explain(setup.header, "Atelectasis"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and len(results) == 3
    assert all(np.array_equal(r.heat, atelectasis.heat) for r in results)


def test_the_explainer_is_lazy_and_refuses_what_is_not_its_own(setup: Setup) -> None:
    fresh = explainer_for(setup.model, setup.images)
    assert isinstance(fresh, ModelExplainer)
    assert fresh.gradcam.layer == ""  # nothing built yet
    stranger = Dataset()
    stranger.SOPInstanceUID = "1.2.3.4.5"
    with pytest.raises(ReportError, match=re.escape("1.2.3.4.5 is not in the analysis")):
        fresh.explain(stranger, "Atelectasis")
    with pytest.raises(ReportError, match="no label 'Nonsense'"):
        fresh.explain(setup.header, "Nonsense")


def test_the_target_layer_is_the_last_feature_block(setup: Setup) -> None:
    from models.engines import build_torch_model

    net = build_torch_model(setup.model.manifest, setup.model.weights)
    name, layer = target_layer(net, "densenet121")
    assert name == "features.norm5" and layer is net.get_submodule("features.norm5")
    fallback, _ = target_layer(net, "unknown-architecture")
    assert fallback == "features.norm5"  # the last Conv2d/BatchNorm2d in definition order


@pytest.mark.parametrize(
    "steps",
    [
        [
            {"step": "center_crop", "offsets": "xrv"},
            {"step": "resize", "size": 64, "engine": "skimage"},
        ],
        [{"step": "pad_square"}, {"step": "resize", "size": [48, 48], "engine": "skimage"}],
        [{"step": "center_crop", "size": [90, 60], "offsets": "torchvision"}],
    ],
    ids=["crop-resize", "pad-resize", "crop-only"],
)
def test_the_geometry_inverse_undoes_the_preprocessing(steps: list[dict[str, object]]) -> None:
    """A smooth source-space map sent forward through the steps comes back where it was."""
    rows, columns = 151, 97
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float64)
    source = (0.5 + 0.5 * np.sin(y / 23.0) * np.cos(x / 17.0))[None]  # (1, H, W) in [0, 1]
    forward = source
    for spec in steps:
        if spec["step"] == "center_crop":
            size = spec.get("size")
            forward = center_crop(forward, tuple(size) if size else None, str(spec["offsets"]))  # type: ignore[arg-type]
        elif spec["step"] == "pad_square":
            forward = pad_square(forward)
        else:
            size = spec["size"]
            target = (size, size) if isinstance(size, int) else tuple(size)  # type: ignore[arg-type]
            forward = resize_skimage(forward, target, border="constant")  # type: ignore[arg-type]
    geometry = trace(steps, rows, columns)
    assert geometry.exact
    back = geometry.to_source(forward[0].astype(np.float32))
    assert back.shape == (rows, columns)
    seen = back > 0
    if steps[0]["step"] == "pad_square":
        assert seen.all()
    inner = seen.copy()  # compare away from the crop's edges (bilinear blur at the border)
    inner[:, :3] = inner[:, -3:] = inner[:3] = inner[-3:] = False
    assert inner.any()
    np.testing.assert_allclose(back[inner], source[0][inner], atol=0.08)


def test_an_unknown_step_falls_back_to_a_plain_resize() -> None:
    geometry = trace([{"step": "site_warp"}, {"step": "resize", "size": 8}], 40, 20)
    assert not geometry.exact and "approximate" in geometry.describe()
    back = geometry.to_source(np.ones((8, 8), np.float32))
    assert back.shape == (40, 20) and np.allclose(back, 1.0)
