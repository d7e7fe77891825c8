"""Fidelity: our chest pipeline reproduces torchxrayvision's published inference path.

Reference (torchxrayvision's own functions, not a re-implementation):
``xrv.utils.read_xray_dcm(path)`` (default arguments) -> ``xrv.datasets.XRayCenterCrop()``
-> ``xrv.datasets.XRayResizer(224)`` -> ``xrv.models.DenseNet`` forward with sigmoid.

Ours: the shipped manifest's ``Preprocessor`` -> the weights imported through
``dicom-node models import`` (the restricted unpickler reading a whole pickled
torchxrayvision module, as the published file is) -> the torch backend with
the manifest's sigmoid.

The weights are seeded random (the published file cannot be downloaded
here), with batch-norm statistics estimated on noise so that outputs are not
saturated and a difference in the input shows in the probabilities.
torchvision is replaced by a FAKE stub (tests/fakes/torchvision_stub.py).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from pydicom import dcmread
from pydicom.data import get_testdata_file

from dicom_node.app.cli import main as cli_main
from models.backends import load_model
from models.contract import to_batch
from models.manifest import Manifest
from models.preprocessing import Preprocessor
from models.registry import ModelRegistry
from models.weights import resolve_weights
from tests.fakes.torchvision_stub import torchxrayvision_with_fake_torchvision

MODEL_ID = "xrv-densenet121-res224-all"
SEED = 1234
PROBABILITY_TOLERANCE = 1e-4
INPUT_TOLERANCE = 1e-3  # units of the [-1024, 1024] scale; float32 vs float64 rounding only


@pytest.fixture(scope="module")
def xrv() -> Iterator[ModuleType]:
    with torchxrayvision_with_fake_torchvision() as module:
        yield module


@pytest.fixture(scope="module")
def chest_cr() -> Path:
    """pydicom-data's RG1_UNCR.dcm: a real adult chest CR, MONOCHROME1, 1955x1841, 15 bits."""
    return Path(str(get_testdata_file("RG1_UNCR.dcm")))


@pytest.fixture(scope="module")
def chest() -> Manifest:
    return ModelRegistry.load(None).get(MODEL_ID)


def xrv_input(xrv: ModuleType, path: Path, voi_lut: bool = False) -> np.ndarray:
    """torchxrayvision's published preprocessing, ``(1, 224, 224) float32``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its MONOCHROME1 notice
        img = xrv.utils.read_xray_dcm(path, voi_lut=voi_lut)
    img = xrv.datasets.XRayCenterCrop()(img[None, ...])
    return np.asarray(xrv.datasets.XRayResizer(224)(img))


def published_like_model(xrv: ModuleType, labels: list[str]) -> torch.nn.Module:
    """A seeded torchxrayvision DenseNet-121 "all" (18 outputs), sigmoid applied."""
    torch.manual_seed(SEED)
    model = xrv.models.DenseNet(weights=None, apply_sigmoid=True)
    assert list(model.targets) == labels  # same outputs, same order as the manifest
    assert xrv.models.model_urls["densenet121-res224-all"]["labels"] == labels
    noise = torch.Generator().manual_seed(SEED)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the noise batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(4, 1, 224, 224, generator=noise) * 2048.0 - 1024.0)
    return model.eval()


@pytest.fixture(scope="module")
def models_dir(
    xrv: ModuleType, chest: Manifest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[torch.nn.Module, Path]:
    """The reference model, and a models dir where it was imported via the CLI."""
    root = tmp_path_factory.mktemp("xrv-fidelity")
    model = published_like_model(xrv, chest.label_names)
    checkpoint = root / "densenet121-res224-all.pt"
    torch.save(model, checkpoint)  # a whole pickled module, as the published file
    with pytest.MonkeyPatch.context() as env:  # module scope: before the autouse env reset
        for name in [n for n in os.environ if n.startswith("DICOM_NODE_")]:
            env.delenv(name)
        env.setenv("DICOM_NODE_DATA_DIR", str(root / "data"))
        env.setenv("DICOM_NODE_MODELS_DIR", str(root / "models"))
        assert cli_main(["models", "import", MODEL_ID, str(checkpoint)]) == 0
    return model, root / "models"


def test_preprocessing_matches_read_xray_dcm_crop_resize(
    xrv: ModuleType, chest: Manifest, chest_cr: Path
) -> None:
    ref = xrv_input(xrv, chest_cr)
    ours = Preprocessor.from_manifest(chest)(dcmread(chest_cr))
    assert ours.shape == ref.shape == (1, 224, 224) and ours.dtype == np.float32
    diff = float(np.abs(ours - ref).max())
    print(f"max |preprocessing difference| = {diff:.3g} units of [-1024, 1024]")
    assert diff < INPUT_TOLERANCE


def test_voi_switch_matches_read_xray_dcm_voi_lut_true(
    xrv: ModuleType, chest: Manifest, chest_cr: Path
) -> None:
    """The documented switch: ``voi_lut`` first == ``read_xray_dcm(voi_lut=True)``."""
    steps = [{"step": "voi_lut"}, *chest.preprocessing]
    ref = xrv_input(xrv, chest_cr, voi_lut=True)
    ours = Preprocessor(steps)(dcmread(chest_cr))
    assert float(np.abs(ours - ref).max()) < INPUT_TOLERANCE
    # and it is a real switch: the VOI changes this image's input substantially
    assert float(np.abs(ours - xrv_input(xrv, chest_cr)).max()) > 100.0


def test_probabilities_match_torchxrayvision(
    xrv: ModuleType,
    chest: Manifest,
    chest_cr: Path,
    models_dir: tuple[torch.nn.Module, Path],
) -> None:
    reference_model, directory = models_dir
    with torch.no_grad():
        expected = reference_model(torch.from_numpy(xrv_input(xrv, chest_cr))[None]).numpy()

    weights = resolve_weights(chest, directory, allow_demo=False)
    assert weights.kind == "real"
    loaded = load_model(chest, weights, directory, backend="torch")
    image = Preprocessor.from_manifest(chest)(dcmread(chest_cr))
    got = loaded.predict(to_batch(chest, [image]))

    assert got.shape == expected.shape == (1, 18)
    # Not saturated, so that agreement means something.
    assert float(expected.min()) > 1e-3 and float(expected.max()) < 1 - 1e-3
    assert float(expected.std()) > 1e-3
    delta = float(np.abs(got - expected).max())
    print(f"max |delta p| = {delta:.3g} over 18 labels")
    assert delta < PROBABILITY_TOLERANCE


def _with_voi(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"step": "voi_lut"}, *steps]


def _with_torch_resize(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    resize = {"step": "resize", "size": 224, "engine": "torch", "interpolation": "bilinear"}
    return [*steps[:-1], {**resize, "antialias": True}]


def _with_minmax(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    normalize = {"step": "normalize", "source": "image_minmax", "to": [-1024, 1024]}
    return [steps[0], normalize, *steps[2:]]


@pytest.mark.parametrize(
    "deviate", [_with_voi, _with_torch_resize, _with_minmax], ids=["voi", "torch-resize", "minmax"]
)
def test_probability_check_catches_the_previous_deviations(
    xrv: ModuleType,
    chest: Manifest,
    chest_cr: Path,
    models_dir: tuple[torch.nn.Module, Path],
    deviate: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
) -> None:
    """Each deviation of the previous release moves p well past the tolerance."""
    reference_model, _ = models_dir
    assert [s["step"] for s in chest.preprocessing][1::2] == ["normalize", "resize"]
    image = Preprocessor(deviate(list(chest.preprocessing)))(dcmread(chest_cr))
    with torch.no_grad():
        expected = reference_model(torch.from_numpy(xrv_input(xrv, chest_cr))[None]).numpy()
        deviating = reference_model(torch.from_numpy(image)[None]).numpy()
    assert float(np.abs(deviating - expected).max()) > 10 * PROBABILITY_TOLERANCE
