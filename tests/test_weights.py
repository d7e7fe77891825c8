import hashlib
import http.server
import json
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dicom_node.core.errors import (
    InferenceError,
    UnsafePickleError,
    WeightsError,
    WeightsIntegrityError,
    WeightsUnavailableError,
)
from models.backends import load_model
from models.manifest import Manifest, parse_manifest
from models.registry import ModelRegistry
from models.weights import (
    NOT_INSTALLED,
    UNTRAINED_NOTICE,
    fetch_weights,
    import_weights,
    list_models,
    read_checkpoint,
    resolve_weights,
    verify_weights,
)
from tests.fakes.xrv_checkpoint import make_xrv_like_checkpoint


@pytest.fixture(scope="module")
def fake_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_xrv_like_checkpoint(tmp_path_factory.mktemp("ckpt") / "xrv.pt", fmt="legacy")


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_restricted_unpickler_rebuilds_every_tensor(tmp_path: Path, fmt: str) -> None:
    path = make_xrv_like_checkpoint(tmp_path / f"xrv-{fmt}.pt", seed=3, fmt=fmt)
    reference = torch.load(str(path) + ".state_dict", weights_only=True)
    tensors = read_checkpoint(path)
    assert set(tensors) == set(reference)
    for name, tensor in reference.items():
        assert torch.equal(tensors[name], tensor), name


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("touch /tmp/dicom-node-pwned",))


def test_code_in_a_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"features.conv0.weight": _Evil()}, path)
    with pytest.raises(UnsafePickleError, match="system"):
        read_checkpoint(path)
    assert not Path("/tmp/dicom-node-pwned").exists()


def test_import_converts_once_and_records_hashes(
    fake_checkpoint: Path, manifest: Manifest, tmp_path: Path
) -> None:
    info = import_weights(fake_checkpoint, manifest, tmp_path)
    assert info.kind == "real" and info.is_real
    assert info.source_sha256 == hashlib.sha256(fake_checkpoint.read_bytes()).hexdigest()
    assert Path(info.path).suffix == ".safetensors"
    assert resolve_weights(manifest, tmp_path, allow_demo=False) == info


def test_pinned_hash_mismatch_is_refused(
    fake_checkpoint: Path, manifest: Manifest, tmp_path: Path
) -> None:
    pinned = manifest.model_copy(
        update={"weights": manifest.weights.model_copy(update={"sha256": "0" * 64})}
    )
    with pytest.raises(WeightsIntegrityError, match="pinned"):
        import_weights(fake_checkpoint, pinned, tmp_path)


def test_tampered_converted_weights_are_refused(
    fake_checkpoint: Path, manifest: Manifest, tmp_path: Path
) -> None:
    info = import_weights(fake_checkpoint, manifest, tmp_path)
    with open(info.path, "r+b") as fh:
        fh.seek(-4, os.SEEK_END)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(WeightsIntegrityError):
        resolve_weights(manifest, tmp_path, allow_demo=False)


def test_no_weights_and_no_demo_is_refused(manifest: Manifest, tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailableError, match="ALLOW_DEMO_WEIGHTS"):
        resolve_weights(manifest, tmp_path, allow_demo=False)


@pytest.fixture()
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A real local HTTP server (the machine has no internet)."""
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_fetch_downloads_over_http(
    fake_checkpoint: Path, manifest: Manifest, tmp_path: Path, http_root: tuple[Path, str]
) -> None:
    root, base = http_root
    name = manifest.weights.filename or "published.pt"
    (root / name).write_bytes(fake_checkpoint.read_bytes())
    info = fetch_weights(manifest, tmp_path / "models", url=f"{base}/{name}")
    assert info.origin == f"{base}/{name}"
    assert info.source_sha256 == hashlib.sha256(fake_checkpoint.read_bytes()).hexdigest()
    assert not list((tmp_path / "models").rglob("*.download"))


# Pins at load, safetensors, verify, listing ---------------------------------


def _pinned(manifest: Manifest, sha256: str) -> Manifest:
    return manifest.model_copy(
        update={"weights": manifest.weights.model_copy(update={"sha256": sha256})}
    )


def test_a_pin_is_checked_again_at_load(
    fake_checkpoint: Path, manifest: Manifest, tmp_path: Path
) -> None:
    info = import_weights(fake_checkpoint, manifest, tmp_path)
    assert resolve_weights(_pinned(manifest, info.source_sha256 or ""), tmp_path, False) == info
    with pytest.raises(WeightsIntegrityError, match="differs from the pinned 0000"):
        resolve_weights(_pinned(manifest, "0" * 64), tmp_path, allow_demo=True)


def test_safetensors_import_and_verify(manifest: Manifest, tmp_path: Path) -> None:
    state = read_checkpoint(make_xrv_like_checkpoint(tmp_path / "x.pt", seed=5))
    source = tmp_path / "published.safetensors"
    save_file(state, str(source))
    info = import_weights(source, manifest, tmp_path / "models")
    assert (info.kind, info.format) == ("real", "safetensors")
    assert info.source_sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert verify_weights(manifest, tmp_path / "models") == info
    Path(info.path).write_bytes(Path(info.path).read_bytes()[:-1] + b" ")
    with pytest.raises(WeightsIntegrityError, match="does not match its recorded sha256"):
        verify_weights(manifest, tmp_path / "models")
    with pytest.raises(WeightsUnavailableError, match="no weights installed"):
        verify_weights(manifest, tmp_path / "elsewhere")


def test_list_models(fake_checkpoint: Path, manifest: Manifest, tmp_path: Path) -> None:
    registry = ModelRegistry.load(None)
    rows = {row.model_id: row for row in list_models(registry, tmp_path)}
    assert set(rows) == set(registry.ids())
    assert {row.weights for row in rows.values()} == {NOT_INSTALLED}
    info = import_weights(fake_checkpoint, manifest, tmp_path)
    row = {r.model_id: r for r in list_models(registry, tmp_path)}[manifest.id]
    assert (row.weights, row.format, row.sha256, row.note) == (
        "real",
        "safetensors",
        info.sha256,
        "",
    )


# Demo weights for any architecture -------------------------------------------


def _small(manifest: Manifest, side: int) -> Manifest:
    spec = manifest.input.model_copy(update={"shape": (manifest.input.shape[0], side, side)})
    return manifest.model_copy(update={"input": spec})


@pytest.mark.parametrize(
    "model_id", ["mura-densenet169-abnormality", "ich-headct-densenet121-rsna2019"]
)
def test_demo_weights_for_three_channel_models(
    model_id: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = _small(ModelRegistry.load(None).get(model_id), 64)  # small: CPU time
    with caplog.at_level(logging.WARNING):
        info = resolve_weights(manifest, tmp_path / "a", allow_demo=True)
    assert UNTRAINED_NOTICE in caplog.text
    assert (info.kind, info.is_real, info.source_sha256) == ("untrained-demo", False, None)
    again = resolve_weights(manifest, tmp_path / "b", allow_demo=True)
    first, second = load_file(info.path), load_file(again.path)
    for name, tensor in first.items():  # seeded: the same parameters; BN statistics are
        if "running_" in name:  # float sums whose last bits may depend on the CPU's kernels
            torch.testing.assert_close(tensor, second[name], rtol=1e-4, atol=1e-6)
        else:
            assert torch.equal(tensor, second[name]), name
    assert resolve_weights(manifest, tmp_path / "a", allow_demo=True) == info  # made once
    model = load_model(manifest, info, tmp_path / "a", "torch")
    low, high = manifest.input.value_range
    batch = np.random.default_rng(1).uniform(low, high, (3, *manifest.input.shape))
    scores = model.predict(batch.astype(np.float32))
    assert scores.shape == (3, len(manifest.labels)) and np.isfinite(scores).all()
    assert float(scores.min()) > 0.01 and float(scores.max()) < 0.99
    bigger = _small(manifest, 96)  # the manifest changed: demo weights are rebuilt
    assert resolve_weights(bigger, tmp_path / "a", allow_demo=True).origin != info.origin


# ONNX weights: bring your own model -------------------------------------------


ONNX_MANIFEST: dict[str, Any] = {
    "id": "site-onnx",
    "name": "Site ONNX test model",
    "version": "0.1",
    "architecture": None,
    "upstream": "tests",
    "reference": "tests",
    "weights": {
        "uri": None,
        "filename": "tiny.onnx",
        "sha256": None,
        "format": "onnx",
        "license": "test",
    },
    "input": {
        "name": "image",
        "layout": "NCHW",
        "shape": [1, 16, 16],
        "value_range": [0, 1],
        "channels": ["gray"],
    },
    "preprocessing": [{"step": "gray_to_rgb"}],
    "output": {"name": "logits", "activation": "softmax"},
    "labels": [
        {
            "name": "Abnormal",
            "threshold": 0.5,
            "code": {"value": "T-ABN", "scheme": "99DCMNODE", "meaning": "Abnormal"},
        },
        {
            "name": "Normal",
            "threshold": 0.5,
            "report": False,
            "code": {"value": "T-NORM", "scheme": "99DCMNODE", "meaning": "Normal"},
        },
    ],
    "routing": {"rules": [{"modalities": ["CR"]}]},
    "model_card": {
        "intended_use": "tests",
        "training_data": "none",
        "limitations": "none",
        "subgroup_caveats": "none",
        "reference": "tests",
    },
}


def onnx_manifest(**weights: Any) -> Manifest:
    data = json.loads(json.dumps(ONNX_MANIFEST))
    data["weights"].update(weights)
    return parse_manifest(data)


def tiny_onnx(path: Path, input_name: str = "image") -> str:
    torch.manual_seed(3)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 2),
    ).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 16, 16),),
            str(path),
            dynamo=False,
            input_names=[input_name],
            output_names=["logits"],
            dynamic_axes={input_name: {0: "N"}, "logits": {0: "N"}},
            opset_version=17,
        )
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_onnx_import_runs_the_file_itself(tmp_path: Path) -> None:
    source = tmp_path / "tiny.onnx"
    sha = tiny_onnx(source)
    manifest = onnx_manifest(sha256=sha)
    info = import_weights(source, manifest, tmp_path / "models")
    assert (info.kind, info.format, info.sha256, info.source_sha256) == ("real", "onnx", sha, sha)
    assert resolve_weights(manifest, tmp_path / "models", allow_demo=False) == info
    assert verify_weights(manifest, tmp_path / "models") == info
    model = load_model(manifest, info, tmp_path / "models")
    assert model.backend == "onnxruntime"
    batch = np.random.default_rng(0).uniform(0, 1, (2, 1, 16, 16)).astype(np.float32)
    scores = model.predict(batch)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-6)  # softmax applied
    with pytest.raises(InferenceError, match="torch backend cannot run ONNX weights"):
        load_model(manifest, info, tmp_path / "models", "torch")


def test_onnx_import_refusals(tmp_path: Path) -> None:
    source = tmp_path / "tiny.onnx"
    sha = tiny_onnx(source)
    with pytest.raises(WeightsIntegrityError, match="differs from the pinned"):
        import_weights(source, onnx_manifest(sha256="f" * 64), tmp_path)
    renamed = tmp_path / "renamed.onnx"
    tiny_onnx(renamed, input_name="input_1")
    with pytest.raises(WeightsIntegrityError, match=r"graph inputs \['input_1'\].*'image'"):
        import_weights(renamed, onnx_manifest(), tmp_path)
    three = parse_manifest(
        json.loads(json.dumps(ONNX_MANIFEST))
        | {"labels": ONNX_MANIFEST["labels"] + [{**ONNX_MANIFEST["labels"][0], "name": "Third"}]}
    )
    with pytest.raises(WeightsIntegrityError, match="has 2 columns, manifest has 3 labels"):
        import_weights(source, three, tmp_path)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07 not a protobuf")
    with pytest.raises(WeightsError, match="not a valid ONNX model"):
        import_weights(garbage, onnx_manifest(), tmp_path)
    with pytest.raises(WeightsError, match="ONNX-only"):
        import_weights(make_xrv_like_checkpoint(tmp_path / "x.pt"), onnx_manifest(), tmp_path)
    assert sha


def test_an_onnx_only_model_has_no_demo_weights_unless_its_uri_is_local(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    with pytest.raises(WeightsUnavailableError, match="ONNX-only"):
        resolve_weights(onnx_manifest(), models_dir, allow_demo=True)
    (models_dir / "site").mkdir(parents=True)
    sha = tiny_onnx(models_dir / "site" / "tiny.onnx")
    relative = onnx_manifest(uri="site/tiny.onnx", sha256=sha)
    info = resolve_weights(relative, models_dir, allow_demo=False)
    assert (info.kind, info.sha256, info.origin) == ("real", sha, "site/tiny.onnx")
    uri = (models_dir / "site" / "tiny.onnx").as_uri()
    fetched = fetch_weights(onnx_manifest(uri=uri, sha256=sha), tmp_path / "other")
    assert fetched.sha256 == sha and fetched.origin == uri
