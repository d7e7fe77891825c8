"""The record of an installed weights file: what it is, its sha256 and where it came from.

Installed weights live in ``<models_dir>/<model_id>/``: real ones as
``weights.safetensors`` or ``weights.onnx`` with the record ``weights.json``,
seeded untrained ones as ``demo.safetensors`` with ``demo.json``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

from dicom_node.core.durable import write_durably
from dicom_node.core.errors import WeightsIntegrityError

WeightsKind = Literal["real", "untrained-demo"]
StoredFormat = Literal["safetensors", "onnx"]
UNTRAINED_NOTICE = "UNTRAINED DEMO WEIGHTS - NOT FOR CLINICAL USE"
"""Put in every log line, report and listing about demo weights."""


@dataclass(frozen=True)
class WeightsInfo:
    """An installed weights file and where it came from.

    Attributes
    ----------
    model_id : str
        Manifest id.
    kind : {"real", "untrained-demo"}
        Imported weights, or seeded random ones.
    path : str
        The installed file (``.safetensors`` or ``.onnx``).
    sha256 : str
        sha256 of that file (hex).
    source_sha256 : str or None
        sha256 of the file it was imported from (what a manifest pins; equal
        to ``sha256`` for ONNX, None for demo weights).
    origin : str
        URL or file name it came from, or the demo seed and architecture.
    created_at : float
        Epoch seconds.
    format : {"safetensors", "onnx"}
        How the installed file is stored.
    """

    model_id: str
    kind: WeightsKind
    path: str
    sha256: str
    source_sha256: str | None
    origin: str
    created_at: float
    format: StoredFormat = "safetensors"

    @property
    def is_real(self) -> bool:
        """True for imported (trained) weights."""
        return self.kind == "real"

    @property
    def source(self) -> str:
        """Alias of :attr:`origin` (the 0.1 name)."""
        return self.origin


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def record_path(directory: Path, kind: WeightsKind) -> Path:
    """``weights.json`` (real) or ``demo.json`` (demo) in a model's directory."""
    return directory / ("weights.json" if kind == "real" else "demo.json")


def write_record(info: WeightsInfo) -> None:
    """Write the JSON record next to the weights, durably."""
    target = record_path(Path(info.path).parent, info.kind)
    write_durably(target, json.dumps(asdict(info), indent=2).encode())


def read_record(directory: Path, kind: WeightsKind, verify: bool = True) -> WeightsInfo | None:
    """Read a model's record, and by default re-hash its file.

    The recorded path is taken relative to ``directory`` (the models
    directory may have moved). Records of release 0.1 (``source``, no
    ``format``) are read too.

    Returns
    -------
    WeightsInfo or None
        None when there is no record or no file.

    Raises
    ------
    WeightsIntegrityError
        If ``verify`` and the file's sha256 differs from the record, or the
        record is unreadable.
    """
    record = record_path(directory, kind)
    if not record.is_file():
        return None
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
        if "source" in data and "origin" not in data:
            data["origin"] = data.pop("source")
        known = {f.name for f in fields(WeightsInfo)}
        info = WeightsInfo(**{k: v for k, v in data.items() if k in known})
    except (ValueError, TypeError) as exc:
        raise WeightsIntegrityError(f"weights record {record} is unreadable: {exc}") from exc
    path = directory / Path(info.path).name
    if not path.is_file():
        return None
    if str(path) != info.path:
        info = WeightsInfo(**{**asdict(info), "path": str(path)})
    if verify and sha256_file(path) != info.sha256:
        raise WeightsIntegrityError(f"{path} does not match its recorded sha256 {info.sha256}")
    return info
