import hashlib
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dicom_node.core.errors import UnsafePickleError, WeightsIntegrityError, WeightsUnavailableError
from models.manifest import Manifest
from models.weights.store.store import fetch_weights, import_checkpoint, read_checkpoint, resolve_weights
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
    info = import_checkpoint(fake_checkpoint, manifest, tmp_path)
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
        import_checkpoint(fake_checkpoint, pinned, tmp_path)


def test_tampered_converted_weights_are_refused(
    fake_checkpoint: Path, manifest: Manifest, tmp_path: Path
) -> None:
    info = import_checkpoint(fake_checkpoint, manifest, tmp_path)
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
    (root / manifest.weights.filename).write_bytes(fake_checkpoint.read_bytes())
    info = fetch_weights(manifest, tmp_path / "models", url=f"{base}/{manifest.weights.filename}")
    assert info.source == f"{base}/{manifest.weights.filename}"
    assert info.source_sha256 == hashlib.sha256(fake_checkpoint.read_bytes()).hexdigest()
    assert not list((tmp_path / "models").rglob("*.download"))
