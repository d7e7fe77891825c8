"""Install, fetch, resolve and verify a model's weights.

Three kinds of file can be imported (:func:`import_weights`):

- ``torch-pickled-module``: a ``.pt`` checkpoint (torchxrayvision publishes
  whole pickled modules), read by the restricted unpickler of
  :mod:`models.weights.checkpoint` and converted once to safetensors;
- ``safetensors``: a state dict, checked and re-saved;
- ``onnx``: stored unchanged after :func:`models.weights.onnx_file.check_onnx`;
  backends run it directly ("bring your own model").

A manifest's ``weights.sha256`` pins the file it publishes: a different file
is refused when imported (:class:`WeightsIntegrityError`), and installed
weights whose recorded source hash differs from the pin are refused when
loaded. Installed files are re-hashed against their record at every load.
Serving never unpickles.

Weights for a model live in ``<models_dir>/<model_id>/`` (see
:mod:`models.weights.info`). Bring-your-own ONNX models (``architecture:
null``) have no demo weights: without imported weights they are unavailable,
unless ``weights.uri`` is a ``file://`` URI or a path relative to
``<models_dir>`` that exists, which is then imported on first use (hash
checked against the pin like any import).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

from dicom_node.core.durable import write_durably
from dicom_node.core.errors import (
    WeightsError,
    WeightsIntegrityError,
    WeightsUnavailableError,
)
from models.architectures import Architecture, architecture_for
from models.manifest import Manifest, WeightsFormat
from models.weights.demo import demo_fingerprint, make_demo_weights
from models.weights.info import (
    UNTRAINED_NOTICE,
    StoredFormat,
    WeightsInfo,
    read_record,
    sha256_file,
    write_record,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

REAL_FILES = {"safetensors": "weights.safetensors", "onnx": "weights.onnx"}
_SUFFIXES: dict[str, WeightsFormat] = {
    ".onnx": "onnx",
    ".safetensors": "safetensors",
    ".pt": "torch-pickled-module",
    ".pth": "torch-pickled-module",
    ".ckpt": "torch-pickled-module",
    ".bin": "torch-pickled-module",
}


def model_dir(models_dir: Path, manifest: Manifest) -> Path:
    """``<models_dir>/<model_id>``: where a model's weights and records live."""
    return models_dir / manifest.id


def _lock(models_dir: Path, manifest: Manifest) -> FileLock:
    directory = model_dir(models_dir, manifest)
    directory.mkdir(parents=True, exist_ok=True)
    return FileLock(str(directory / ".weights.lock"))


def detect_format(path: Path) -> WeightsFormat:
    """A weights file's format, from its suffix, else from its first bytes.

    Raises
    ------
    WeightsError
        If it is none of ONNX, safetensors or a torch checkpoint.
    """
    if path.suffix.lower() in _SUFFIXES:
        return _SUFFIXES[path.suffix.lower()]
    with path.open("rb") as fh:
        head = fh.read(9)
    if head[:2] == b"PK" or head[:1] == b"\x80":  # torch zip or legacy pickle
        return "torch-pickled-module"
    if head[8:9] == b"{":  # safetensors: u64 header length, then JSON
        return "safetensors"
    if head[:1] == b"\x08":  # protobuf field 1 varint: ONNX ir_version
        return "onnx"
    raise WeightsError(f"{path.name}: not an ONNX, safetensors or torch checkpoint file")


def check_state_dict(
    tensors: Mapping[str, torch.Tensor],
    manifest: Manifest,
    architectures: Mapping[str, Architecture] | None = None,
) -> dict[str, torch.Tensor]:
    """Keep the tensors the model needs and check names and shapes.

    Parameters
    ----------
    tensors : mapping of str to Tensor
        A state dict, possibly with extra entries (ignored).
    manifest : Manifest
        Names the architecture; its labels give the number of outputs.
    architectures : mapping, optional
        Architecture table (default: built-in).

    Returns
    -------
    dict of str to Tensor
        Exactly the model's ``state_dict`` keys, contiguous, in its dtypes.

    Raises
    ------
    WeightsIntegrityError
        If a tensor is missing or has the wrong shape.
    """
    reference = architecture_for(manifest, architectures).build(manifest).state_dict()
    missing = sorted(set(reference) - set(tensors))
    if missing:
        raise WeightsIntegrityError(f"{len(missing)} tensors missing, e.g. {missing[:3]}")
    checked: dict[str, torch.Tensor] = {}
    for name, ref in reference.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != tuple(ref.shape):
            raise WeightsIntegrityError(
                f"{name}: shape {tuple(tensor.shape)}, model expects {tuple(ref.shape)}"
            )
        checked[name] = tensor.to(ref.dtype).contiguous()
    return checked


def _check_pin(manifest: Manifest, source_sha: str, what: str) -> None:
    pinned = manifest.weights.sha256
    if pinned and pinned != source_sha:
        raise WeightsIntegrityError(
            f"model {manifest.id}: {what} has sha256 {source_sha}, differs from the pinned {pinned}"
        )


def import_weights(
    source: Path,
    manifest: Manifest,
    models_dir: Path,
    origin: str = "",
    fmt: WeightsFormat | None = None,
    architectures: Mapping[str, Architecture] | None = None,
) -> WeightsInfo:
    """Install a weights file as the model's real weights.

    Parameters
    ----------
    source : Path
        A ``.pt`` (pickled module or state dict), ``.safetensors`` or ``.onnx`` file.
    manifest : Manifest
        The model it belongs to; a pinned ``weights.sha256`` must equal the file's.
    models_dir : Path
        Root of installed weights.
    origin : str
        URL or description recorded with the weights (default: the file name).
    fmt : {"torch-pickled-module", "safetensors", "onnx"}, optional
        The file's format (default: :func:`detect_format`).
    architectures : mapping, optional
        Architecture table (default: built-in).

    Returns
    -------
    WeightsInfo
        kind ``real``; ``sha256`` of the installed file, ``source_sha256`` of ``source``.

    Raises
    ------
    WeightsIntegrityError
        If the file's sha256 differs from the pinned one, its tensors do not fit
        the architecture, or an ONNX graph does not fit the manifest.
    WeightsError
        If the format cannot be used for this model (non-ONNX weights for an
        ONNX-only manifest) or the file cannot be read.
    UnsafePickleError
        If a checkpoint references a forbidden global.
    """
    source_sha = sha256_file(source)
    _check_pin(manifest, source_sha, source.name)
    if not manifest.weights.sha256:
        log.warning(
            "model %s: weights are not hash-pinned in the manifest; importing %s with sha256 %s",
            manifest.id,
            source.name,
            source_sha,
        )
    fmt = fmt or detect_format(source)
    if manifest.architecture is None and fmt != "onnx":
        raise WeightsError(
            f"model {manifest.id} is ONNX-only (architecture: null); {source.name} is {fmt}"
        )
    directory = model_dir(models_dir, manifest)
    with _lock(models_dir, manifest):
        if fmt == "onnx":
            from models.weights.onnx_file import check_onnx

            check_onnx(source, manifest)
            target = directory / REAL_FILES["onnx"]
            write_durably(target, source.read_bytes())
            sha = source_sha
        else:
            from safetensors.torch import load_file, save

            from models.weights.checkpoint import read_checkpoint

            try:
                raw = load_file(str(source)) if fmt == "safetensors" else read_checkpoint(source)
            except WeightsError:
                raise
            except Exception as exc:
                raise WeightsError(f"{source.name} is not a readable {fmt} file: {exc}") from exc
            tensors = check_state_dict(raw, manifest, architectures)
            data = save(tensors, metadata={"model_id": manifest.id, "source_sha256": source_sha})
            target = directory / REAL_FILES["safetensors"]
            write_durably(target, data)
            sha = hashlib.sha256(data).hexdigest()
        stored: StoredFormat = "onnx" if fmt == "onnx" else "safetensors"
        info = WeightsInfo(
            manifest.id,
            "real",
            str(target),
            sha,
            source_sha,
            origin or source.name,
            time.time(),
            stored,
        )
        write_record(info)
        for name in REAL_FILES.values():  # the other format's file is now stale
            if directory / name != target:
                (directory / name).unlink(missing_ok=True)
    log.info("model %s: imported real %s weights sha256 %s", manifest.id, stored, sha)
    return info


def _local_uri(uri: str | None, models_dir: Path) -> Path | None:
    """The file a ``file://`` URI or a path relative to ``models_dir`` names, else None."""
    if not uri:
        return None
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        return Path(urllib.parse.unquote(parsed.path))
    if parsed.scheme == "" and not Path(uri).is_absolute():
        return models_dir / uri
    return None


def fetch_weights(
    manifest: Manifest, models_dir: Path, url: str | None = None, timeout: float = 60.0
) -> WeightsInfo:
    """Download (or copy) the published weights and import them.

    Parameters
    ----------
    manifest : Manifest
        Model whose ``weights.uri`` is fetched.
    models_dir : Path
        Root of installed weights.
    url : str, optional
        Override the manifest's URI (a mirror).
    timeout : float
        Socket timeout, seconds.

    Raises
    ------
    WeightsUnavailableError
        If the manifest publishes no URI and none is given.
    WeightsError
        If the download fails; see also :func:`import_weights`.
    """
    uri = url or manifest.weights.uri
    if not uri:
        raise WeightsUnavailableError(
            f"model {manifest.id} publishes no weights URI; import a file with "
            f"`dicom-node models import {manifest.id} FILE`"
        )
    local = _local_uri(uri, models_dir)
    fmt = manifest.weights.format
    if local is not None:
        if not local.is_file():
            raise WeightsError(f"model {manifest.id}: weights file {local} does not exist")
        return import_weights(local, manifest, models_dir, origin=uri, fmt=fmt)
    download_dir = model_dir(models_dir, manifest)
    download_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=download_dir, suffix=".download", delete=False) as tmp:
        tmp_path = Path(tmp.name)
        try:
            with urllib.request.urlopen(uri, timeout=timeout) as response:
                shutil.copyfileobj(response, tmp, length=1 << 20)
        except (OSError, ValueError) as exc:
            tmp_path.unlink(missing_ok=True)
            raise WeightsError(f"cannot download {uri}: {exc}") from exc
    try:
        return import_weights(tmp_path, manifest, models_dir, origin=uri, fmt=fmt)
    finally:
        tmp_path.unlink(missing_ok=True)


def _installed_real(manifest: Manifest, models_dir: Path, verify: bool) -> WeightsInfo | None:
    info = read_record(model_dir(models_dir, manifest), "real", verify=verify)
    if info is not None and verify:
        _check_pin(manifest, info.source_sha256 or info.sha256, f"installed {Path(info.path).name}")
    return info


def resolve_weights(
    manifest: Manifest,
    models_dir: Path,
    allow_demo: bool,
    architectures: Mapping[str, Architecture] | None = None,
) -> WeightsInfo:
    """Find the weights to serve: real ones if installed, else demo ones if allowed.

    Real weights are re-hashed against their record and their source hash
    checked against the manifest's pin. Without real weights, a local
    ``weights.uri`` (``file://`` or relative to ``models_dir``) is imported;
    else demo weights are made (once) when allowed and the model has an
    architecture.

    Parameters
    ----------
    manifest : Manifest
        The model.
    models_dir : Path
        Root of installed weights.
    allow_demo : bool
        Whether seeded untrained weights may be served (``DICOM_NODE_ALLOW_DEMO_WEIGHTS``).
    architectures : mapping, optional
        Architecture table (default: built-in).

    Returns
    -------
    WeightsInfo

    Raises
    ------
    WeightsUnavailableError
        If no real weights are installed and demo weights are not allowed, or
        the model is ONNX-only.
    WeightsIntegrityError
        If a weights file does not match its record or the pinned sha256.
    """
    real = _installed_real(manifest, models_dir, verify=True)
    if real:
        return real
    local = _local_uri(manifest.weights.uri, models_dir)
    if local is not None and local.is_file():
        log.info("model %s: importing weights from %s", manifest.id, manifest.weights.uri)
        return import_weights(
            local,
            manifest,
            models_dir,
            origin=str(manifest.weights.uri),
            fmt=manifest.weights.format,
            architectures=architectures,
        )
    if not allow_demo:
        raise WeightsUnavailableError(
            f"model {manifest.id} has no weights: run `dicom-node models fetch {manifest.id}` "
            f"or `dicom-node models import {manifest.id} FILE`, or set "
            "DICOM_NODE_ALLOW_DEMO_WEIGHTS=1 for untrained demo weights"
        )
    if manifest.architecture is None:
        raise WeightsUnavailableError(
            f"model {manifest.id} is ONNX-only (architecture: null) and has no demo weights: "
            f"import its ONNX file with `dicom-node models import {manifest.id} FILE`"
        )
    with _lock(models_dir, manifest):
        demo = read_record(model_dir(models_dir, manifest), "untrained-demo")
        if demo is not None and demo.origin == demo_fingerprint(manifest):
            return demo
        return make_demo_weights(manifest, models_dir, architectures)


def verify_weights(manifest: Manifest, models_dir: Path) -> WeightsInfo:
    """Re-check installed weights: file hash against the record, source hash against the pin.

    Real weights are verified when installed, else demo weights; imported
    ONNX files are also re-checked against the manifest's input and output.

    Returns
    -------
    WeightsInfo
        The verified weights.

    Raises
    ------
    WeightsUnavailableError
        If nothing is installed.
    WeightsIntegrityError
        If a hash or an ONNX graph does not match.
    """
    info = _installed_real(manifest, models_dir, verify=True)
    if info is None:
        info = read_record(model_dir(models_dir, manifest), "untrained-demo", verify=True)
    if info is None:
        raise WeightsUnavailableError(f"model {manifest.id}: no weights installed")
    if info.format == "onnx":
        from models.weights.onnx_file import check_onnx

        check_onnx(Path(info.path), manifest)
    if not info.is_real:
        log.warning("model %s: installed weights are %s", manifest.id, UNTRAINED_NOTICE)
    return info


def installed_weights(manifest: Manifest, models_dir: Path) -> WeightsInfo | None:
    """The installed weights' record without re-hashing (real first, then demo), or None."""
    directory = model_dir(models_dir, manifest)
    return read_record(directory, "real", verify=False) or read_record(
        directory, "untrained-demo", verify=False
    )


def load_state_dict(info: WeightsInfo) -> dict[str, torch.Tensor]:
    """Load installed safetensors weights (never a pickle).

    Raises
    ------
    WeightsError
        If the weights are ONNX (no state dict) or unreadable.
    """
    if info.format != "safetensors":
        raise WeightsError(f"model {info.model_id}: {info.format} weights have no state dict")
    from safetensors.torch import load_file

    try:
        return load_file(info.path)
    except Exception as exc:
        raise WeightsError(f"cannot read {info.path}: {exc}") from exc
