"""Manifests and registry: shipped ones validate, bad ones are refused by name, site dirs load."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest
import yaml
from pydicom.sr import _concepts_dict

from dicom_node.core.errors import InputContractError, ManifestError
from models.contract import check_input, to_batch
from models.manifest import MANIFEST_DIR, Manifest, load_manifest, parse_manifest
from models.registry import Factories, ModelRegistry

CHEST = "xrv-densenet121-res224-all"
ICH = "ich-headct-densenet121-rsna2019"
MURA = "mura-densenet169-abnormality"

# torchxrayvision model_urls["all"]: labels in output order and op_threshs.
XRV_ALL = {
    "Atelectasis": 0.07422872, "Consolidation": 0.038290843, "Infiltration": 0.09814756,
    "Pneumothorax": 0.0098118475, "Edema": 0.023601074, "Emphysema": 0.0022490358,
    "Fibrosis": 0.010060724, "Effusion": 0.103246614, "Pneumonia": 0.056810737,
    "Pleural_Thickening": 0.026791653, "Cardiomegaly": 0.050318155, "Nodule": 0.023985857,
    "Mass": 0.01939503, "Hernia": 0.042889766, "Lung Lesion": 0.053369623,
    "Fracture": 0.035975814, "Lung Opacity": 0.20204692, "Enlarged Cardiomediastinum": 0.05015312,
}  # fmt: skip


def chest_data() -> dict[str, Any]:
    data = yaml.safe_load((MANIFEST_DIR / f"{CHEST}.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_shipped_manifests_load() -> None:
    registry = ModelRegistry.load(None)
    assert registry.ids() == [ICH, MURA, CHEST]
    assert registry.get(ICH).architecture == "densenet121"
    assert registry.get(ICH).input.chw[0] == 3 and registry.get(ICH).aggregation.scope == "series"
    assert registry.get(MURA).architecture == "densenet169"
    assert registry.get(MURA).aggregation.reduce == "mean"
    for manifest in registry.manifests():
        assert manifest.task == "classification" and manifest.model_card.intended_use


def test_chest_labels_thresholds_and_codes_are_upstream() -> None:
    manifest = ModelRegistry.load(None).get(CHEST)
    assert {label.name: label.threshold for label in manifest.labels} == XRV_ALL
    assert manifest.label_names == list(XRV_ALL)
    sct = {label.name: label.code.value for label in manifest.labels if label.code.scheme == "SCT"}
    assert sct == {"Pneumothorax": "36118008", "Effusion": "60046008", "Cardiomegaly": "287272002"}
    card = manifest.model_card.output_interpretation
    assert "raw sigmoid" in card and "op_threshs" in card and ">=" in card


def test_every_sct_code_is_in_dicoms_code_tables() -> None:
    sct = cast(dict[str, dict[str, Any]], _concepts_dict.concepts["SCT"])
    known = {value for entry in sct.values() for value in entry}
    for manifest in ModelRegistry.load(None).manifests():
        for label in manifest.labels:
            assert label.code.scheme in ("SCT", "99DCMNODE"), label
            if label.code.scheme == "SCT":
                assert label.code.value in known, (manifest.id, label.name)


def test_new_models_say_they_are_untrained() -> None:
    registry = ModelRegistry.load(None)
    for model_id in (ICH, MURA):
        manifest = registry.get(model_id)
        assert manifest.weights.uri is None and manifest.weights.sha256 is None
        assert "UNTRAINED" in manifest.model_card.intended_use


def _mutate(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    node = data
    *parents, leaf = path.split(".")
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(leaf)] = value
    elif value is _DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("colour", "red", "colour: Extra inputs are not permitted"),
        ("labels", [], "labels: List should have at least 1 item"),
        ("id", "Has Spaces", "id: String should match pattern"),
        ("architecture", None, "architecture is null, so weights.format must be 'onnx'"),
        ("weights.sha256", "abc", "weights.sha256: String should match pattern"),
        ("weights.format", "pickle", "weights.format: Input should be"),
        ("input.channels", ["R", "G", "B"], "input.channels has 3 names but shape [1, 224, 224]"),
        ("input.value_range", [1, -1], "must have low < high"),
        ("input.layout", "NCDHW", "input.layout: Input should be 'NCHW' or 'NHWC'"),
        ("output.activation", "relu", "output.activation: Input should be"),
        ("aggregation.reduce", "median", "aggregation.reduce: Input should be"),
        ("labels.0.threshold", 1.5, "label Atelectasis: threshold 1.5 must be in (0, 1)"),
        ("routing.rules", [], "routing.rules: List should have at least 1 item"),
        ("routing.rules.0.study_description", "ches(t", "invalid regular expression 'ches(t'"),
        (
            "routing.rules.0.attributes",
            {"NoSuchKeyword": "x"},
            "'NoSuchKeyword' is not a DICOM keyword",
        ),
        ("model_card.intended_use", _DELETE, "model_card.intended_use: Field required"),
        ("preprocessing", [{"step": "sharpen"}], "preprocessing"),
        ("preprocessing", [{"no_step": 1}], "preprocessing[0] has no 'step' key"),
    ],
)
def test_a_bad_manifest_names_its_problem(path: str, value: Any, message: str) -> None:
    with pytest.raises(ManifestError, match=r"invalid manifest bad\.yaml") as caught:
        parse_manifest(_mutate(chest_data(), path, value), "bad.yaml")
    assert message in str(caught.value)


def test_duplicate_labels_and_softmax_with_one_class_are_refused() -> None:
    data = chest_data()
    data["labels"][1]["name"] = data["labels"][0]["name"]
    with pytest.raises(ManifestError, match="label names must be unique"):
        parse_manifest(data)
    data = chest_data()
    data["output"]["activation"] = "softmax"
    data["labels"] = data["labels"][:1]
    with pytest.raises(ManifestError, match="softmax output needs one label per class"):
        parse_manifest(data)


def test_unreadable_files_are_manifest_errors(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("id: [unclosed")
    with pytest.raises(ManifestError, match=r"a\.yaml: not YAML"):
        load_manifest(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ManifestError, match=r"b\.yaml: expected a mapping"):
        load_manifest(tmp_path / "b.yaml")
    with pytest.raises(ManifestError, match="cannot read manifest"):
        load_manifest(tmp_path / "missing.yaml")


def _write(directory: Path, data: dict[str, Any], name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_site_manifests_are_found_and_duplicates_refused(tmp_path: Path) -> None:
    user_dir = tmp_path / "models" / "manifests"
    site = chest_data() | {"id": "site-chest", "name": "Site chest"}
    _write(user_dir, site, "site-chest.yaml")
    registry = ModelRegistry.load(user_dir)
    assert "site-chest" in registry and len(registry) == 4
    assert registry.source("site-chest").endswith("site-chest.yaml")
    assert ModelRegistry.load(tmp_path / "nowhere").ids() == [ICH, MURA, CHEST]

    _write(user_dir, chest_data(), "my-copy.yaml")
    with pytest.raises(ManifestError, match=f"duplicate model id '{CHEST}' in .*my-copy.yaml"):
        ModelRegistry.load(user_dir)


def test_architecture_keys_and_params_are_checked_by_the_registry() -> None:
    base = parse_manifest(chest_data())
    unknown = base.model_copy(update={"architecture": "resnet50"})
    with pytest.raises(
        ManifestError, match=r"unknown architecture 'resnet50'; known: \['densenet121'"
    ):
        ModelRegistry([unknown])
    wrong = base.model_copy(update={"architecture_params": {"in_channels": 3}})
    with pytest.raises(ManifestError, match="in_channels 3 differs from the input's 1 channels"):
        ModelRegistry([wrong])
    extra = base.model_copy(update={"architecture_params": {"depth": 7}})
    with pytest.raises(ManifestError, match=r"has no parameters \['depth'\]"):
        ModelRegistry([extra])
    with pytest.raises(ManifestError, match="unknown model 'nope'"):
        ModelRegistry([base]).get("nope")


def test_factories_are_per_object() -> None:
    one, two = ModelRegistry.load(None), ModelRegistry.load(None)
    one.architectures.register("tiny", one.architectures.get("densenet121"))
    assert "tiny" in one.architectures and "tiny" not in two.architectures
    with pytest.raises(ValueError, match="already registered"):
        one.architectures.register("tiny", one.architectures.get("densenet121"))
    assert two.backends.keys() == ["onnxruntime", "tensorrt", "torch"]
    with pytest.raises(ManifestError, match="unknown backend 'openvino'"):
        Factories("backend", two.backends.as_dict()).get("openvino")


# The input contract -------------------------------------------------------


@pytest.fixture(scope="module")
def chest() -> Manifest:
    return parse_manifest(chest_data())


def _nhwc(manifest: Manifest) -> Manifest:
    spec = manifest.input.model_copy(update={"layout": "NHWC", "shape": (224, 224, 1)})
    return manifest.model_copy(update={"input": spec})


def test_to_batch_lays_out_nchw_and_nhwc(chest: Manifest) -> None:
    images = [np.full((1, 224, 224), v, np.float32) for v in (0.0, 1.0)]
    nchw = to_batch(chest, images)
    assert nchw.shape == (2, 1, 224, 224) and nchw.dtype == np.float32
    nhwc = to_batch(_nhwc(chest), images)
    assert nhwc.shape == (2, 224, 224, 1) and nhwc.flags.c_contiguous
    check_input(chest, nchw)
    check_input(_nhwc(chest), nhwc)
    with pytest.raises(InputContractError, match=r"image 1 has shape \(1, 100, 100\)"):
        to_batch(chest, [images[0], np.zeros((1, 100, 100), np.float32)])
    with pytest.raises(InputContractError, match="empty batch"):
        to_batch(chest, [])


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (
            np.zeros((2, 224, 224, 1), np.float32),
            "shape (2, 224, 224, 1), expected (N, 1, 224, 224)",
        ),
        (np.zeros((1, 224, 224), np.float32), "expected (N, 1, 224, 224) in NCHW layout"),
        (np.zeros((0, 1, 224, 224), np.float32), "empty batch (N = 0)"),
        (np.zeros((1, 1, 224, 224), np.float64), "dtype float64, expected float32"),
        (
            np.full((1, 1, 224, 224), 1100.0, np.float32),
            "values in [1100, 1100], declared value_range [-1024, 1024]",
        ),
        (np.full((1, 1, 224, 224), np.nan, np.float32), "NaN or infinite"),
    ],
)
def test_check_input_refuses(chest: Manifest, batch: npt.NDArray[Any], message: str) -> None:
    with pytest.raises(InputContractError, match=re.escape(message)):
        check_input(chest, batch)


def test_check_input_tolerates_interpolation_overshoot(chest: Manifest) -> None:
    check_input(chest, np.full((1, 1, 224, 224), 1024.0 + 1.0, np.float32))  # 1e-3 of 2048 = 2.048
