"""Model weights: fetch, import, convert once to safetensors, and resolve at serve time.

torchxrayvision publishes each model as a whole pickled ``nn.Module`` whose
pickle names torchxrayvision's classes. Importing that package would pull in
torchvision, and unpickling untrusted data runs code. So :func:`read_checkpoint`
rebuilds only the tensors with a restricted unpickler: tensor-rebuild functions
and storages are allowed, every ``torch.nn`` / ``torchxrayvision`` class is
replaced by an inert :class:`_ModuleStub` that only keeps its attribute dict,
and any other global raises :class:`UnsafePickleError`.

Converted weights live in ``<models_dir>/<model_id>/`` as
``weights.safetensors`` (real) or ``demo.safetensors`` (seeded, untrained),
each with a JSON record of its sha256 and origin. Serving never unpickles.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import shutil
import tempfile
import time
import urllib.request
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Literal

import torch
from safetensors.torch import load_file, save

from dicom_node.core.errors import (
    UnsafePickleError,
    WeightsError,
    WeightsIntegrityError,
    WeightsUnavailableError,
)
from dicom_node.core.durable import write_durably
from models.architectures.densenet import DenseNet121
from models.manifest import Manifest

log = logging.getLogger(__name__)

WeightsKind = Literal["real", "untrained-demo"]
DEMO_SEED = 20241122
UNTRAINED_NOTICE = "UNTRAINED DEMO WEIGHTS - NOT FOR CLINICAL USE"


@dataclass(frozen=True)
class WeightsInfo:
    """A converted weights file and where it came from.

    Attributes
    ----------
    model_id : str
        Manifest id.
    kind : {"real", "untrained-demo"}
        Real published weights, or seeded random ones.
    path : str
        The safetensors file.
    sha256 : str
        sha256 of the safetensors file (hex).
    source_sha256 : str or None
        sha256 of the file it was converted from (None for demo weights).
    source : str
        URL or file name of the origin, or the seed.
    created_at : float
        Epoch seconds.
    """

    model_id: str
    kind: WeightsKind
    path: str
    sha256: str
    source_sha256: str | None
    source: str
    created_at: float

    @property
    def is_real(self) -> bool:
        """True for trained, published weights."""
        return self.kind == "real"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _ModuleStub:
    """Stands in for any pickled nn.Module class; keeps state, runs no code."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,  # protocol-2 pickles name builtins the Python 2 way
}
_STUB_MODULE_PREFIXES = ("torch.nn.modules.", "torchxrayvision.")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module.startswith(_STUB_MODULE_PREFIXES):
            return type(name, (_ModuleStub,), {"__module__": "stub." + module})
        raise UnsafePickleError(f"checkpoint references forbidden global {module}.{name}")


class _RestrictedPickleModule:
    """A ``pickle_module`` for ``torch.load`` that uses :class:`_RestrictedUnpickler`."""

    Unpickler = _RestrictedUnpickler
    __name__ = "restricted_pickle"

    @staticmethod
    def load(file: IO[bytes], **kwargs: Any) -> Any:
        return _RestrictedUnpickler(file, **kwargs).load()


def _collect_tensors(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    state = obj.__dict__
    for group in ("_parameters", "_buffers"):
        for name, tensor in (state.get(group) or {}).items():
            if isinstance(tensor, torch.Tensor):
                out[prefix + name] = tensor.detach().clone()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _collect_tensors(child, f"{prefix}{name}.", out)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read tensors from a pickled checkpoint without running its code.

    Accepts a whole pickled module (torchxrayvision's published files) or a
    plain state dict, in either torch's zip or legacy format.

    Parameters
    ----------
    path : Path
        The checkpoint.

    Returns
    -------
    dict of str to Tensor
        ``state_dict``-style names to CPU tensors.

    Raises
    ------
    UnsafePickleError
        If the pickle references a global outside the allowlist.
    WeightsError
        If the file cannot be read as a torch checkpoint.
    """
    try:
        with warnings.catch_warnings():  # legacy files: "couldn't retrieve source code"
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(
                path, map_location="cpu", pickle_module=_RestrictedPickleModule, weights_only=False
            )
    except UnsafePickleError:
        raise
    except Exception as exc:
        raise WeightsError(f"{path.name} is not a readable torch checkpoint: {exc}") from exc
    tensors: dict[str, torch.Tensor] = {}
    if isinstance(obj, _ModuleStub):
        _collect_tensors(obj, "", tensors)
    elif isinstance(obj, dict):
        source = obj.get("state_dict", obj)
        tensors = {k: v.detach().clone() for k, v in source.items() if isinstance(v, torch.Tensor)}
    else:
        raise WeightsError(f"{path.name}: unexpected checkpoint content {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in tensors.items()}


def check_state_dict(
    tensors: dict[str, torch.Tensor], manifest: Manifest
) -> dict[str, torch.Tensor]:
    """Keep the tensors the model needs and check names and shapes.

    Returns
    -------
    dict of str to Tensor
        Exactly the model's ``state_dict`` keys, contiguous float32 / int64.

    Raises
    ------
    WeightsIntegrityError
        If a tensor is missing or has the wrong shape.
    """
    reference = DenseNet121(num_classes=len(manifest.labels)).state_dict()
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


def _model_dir(models_dir: Path, manifest: Manifest) -> Path:
    return models_dir / manifest.id


def _write_record(info: WeightsInfo) -> None:
    record = Path(info.path).with_suffix(".json")
    write_durably(record, json.dumps(asdict(info), indent=2).encode())


def _save(tensors: dict[str, torch.Tensor], target: Path, metadata: dict[str, str]) -> str:
    data = save(tensors, metadata=metadata)
    write_durably(target, data)
    return hashlib.sha256(data).hexdigest()


def import_checkpoint(
    source: Path, manifest: Manifest, models_dir: Path, origin: str = ""
) -> WeightsInfo:
    """Convert a published checkpoint into safetensors, once.

    Parameters
    ----------
    source : Path
        The published ``.pt`` file (torchxrayvision's pickled module).
    manifest : Manifest
        The model it belongs to; its ``weights.sha256`` is checked when pinned.
    models_dir : Path
        Root of converted weights.
    origin : str
        URL or description recorded with the weights (default: the file name).

    Returns
    -------
    WeightsInfo
        The converted weights.

    Raises
    ------
    WeightsIntegrityError
        If the file's sha256 differs from the pinned one, or tensors do not fit.
    UnsafePickleError, WeightsError
        See :func:`read_checkpoint`.
    """
    source_sha = sha256_file(source)
    pinned = manifest.weights.sha256
    if pinned and pinned != source_sha:
        raise WeightsIntegrityError(
            f"{source.name}: sha256 {source_sha} differs from the pinned {pinned}"
        )
    if not pinned:
        log.warning(
            "model %s: weights are not hash-pinned in the manifest; importing %s with sha256 %s",
            manifest.id,
            source.name,
            source_sha,
        )
    tensors = check_state_dict(read_checkpoint(source), manifest)
    target = _model_dir(models_dir, manifest) / "weights.safetensors"
    sha = _save(tensors, target, {"model_id": manifest.id, "source_sha256": source_sha})
    info = WeightsInfo(
        manifest.id, "real", str(target), sha, source_sha, origin or source.name, time.time()
    )
    _write_record(info)
    log.info("model %s: imported real weights sha256 %s", manifest.id, sha)
    return info


def fetch_weights(
    manifest: Manifest, models_dir: Path, url: str | None = None, timeout: float = 60.0
) -> WeightsInfo:
    """Download the published weights and import them.

    Parameters
    ----------
    manifest : Manifest
        Model whose ``weights.url`` is fetched.
    models_dir : Path
        Root of converted weights.
    url : str, optional
        Override the manifest's URL (a mirror).
    timeout : float
        Socket timeout, seconds.

    Raises
    ------
    WeightsError
        If the download fails; see also :func:`import_checkpoint`.
    """
    url = url or manifest.weights.url
    download_dir = _model_dir(models_dir, manifest)
    download_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=download_dir, suffix=".download", delete=False) as tmp:
        tmp_path = Path(tmp.name)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                shutil.copyfileobj(response, tmp, length=1 << 20)
        except OSError as exc:
            tmp_path.unlink(missing_ok=True)
            raise WeightsError(f"cannot download {url}: {exc}") from exc
    try:
        return import_checkpoint(tmp_path, manifest, models_dir, origin=url)
    finally:
        tmp_path.unlink(missing_ok=True)


def make_demo_weights(manifest: Manifest, models_dir: Path) -> WeightsInfo:
    """Create seeded random weights for demos and tests, clearly labelled untrained.

    Convolutions are Kaiming-initialised with a fixed seed; batch-norm running
    statistics are then estimated on seeded noise in the input range, so the
    untrained network gives finite, non-saturated probabilities.
    """
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(DEMO_SEED)
        model = DenseNet121(num_classes=len(manifest.labels))
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None  # cumulative average
        model.train()
        with torch.no_grad():
            for _ in range(2):
                model(torch.rand(4, 1, 224, 224) * 2048.0 - 1024.0)
        model.eval()
    finally:
        torch.random.set_rng_state(generator_state)
    target = _model_dir(models_dir, manifest) / "demo.safetensors"
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    sha = _save(tensors, target, {"model_id": manifest.id, "kind": "untrained-demo"})
    info = WeightsInfo(
        manifest.id, "untrained-demo", str(target), sha, None, f"seed {DEMO_SEED}", time.time()
    )
    _write_record(info)
    log.warning("model %s: created %s, sha256 %s", manifest.id, UNTRAINED_NOTICE, sha)
    return info


def _read_record(path: Path) -> WeightsInfo | None:
    record = path.with_suffix(".json")
    if not (path.is_file() and record.is_file()):
        return None
    info = WeightsInfo(**json.loads(record.read_text()))
    if sha256_file(path) != info.sha256:
        raise WeightsIntegrityError(f"{path} does not match its recorded sha256 {info.sha256}")
    return info


def resolve_weights(manifest: Manifest, models_dir: Path, allow_demo: bool) -> WeightsInfo:
    """Find the weights to serve: real ones if imported, else demo ones if allowed.

    Raises
    ------
    WeightsUnavailableError
        If no real weights are installed and ``allow_demo`` is False.
    WeightsIntegrityError
        If a weights file does not match its recorded sha256.
    """
    directory = _model_dir(models_dir, manifest)
    real = _read_record(directory / "weights.safetensors")
    if real:
        return real
    if not allow_demo:
        raise WeightsUnavailableError(
            f"model {manifest.id} has no weights: run `dicom-node models fetch` or "
            "`dicom-node models import FILE`, or set DICOM_NODE_ALLOW_DEMO_WEIGHTS=1 for "
            "untrained demo weights"
        )
    demo = _read_record(directory / "demo.safetensors")
    return demo or make_demo_weights(manifest, models_dir)


def load_state_dict(info: WeightsInfo) -> dict[str, torch.Tensor]:
    """Load a converted safetensors file (no pickle)."""
    return load_file(info.path)
