"""``models list``: one row per known model with its installed weights (no re-hashing)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dicom_node.core.errors import WeightsError
from models.weights.info import UNTRAINED_NOTICE
from models.weights.store import installed_weights

if TYPE_CHECKING:
    from models.registry import ModelRegistry

NOT_INSTALLED = "not installed"


@dataclass(frozen=True)
class ModelRow:
    """One model as ``models list`` shows it.

    Attributes
    ----------
    model_id, version, task : str
        From the manifest.
    architecture : str
        Registry key, or ``onnx`` for an ONNX-only model.
    weights : str
        ``real``, ``untrained-demo``, ``not installed`` or ``invalid record: ...``.
    format : str or None
        Installed file format (``safetensors`` / ``onnx``).
    sha256 : str or None
        sha256 of the installed file.
    pinned : str or None
        The manifest's pinned sha256.
    source : str
        The manifest file it was read from.
    note : str
        :data:`UNTRAINED_NOTICE` for demo weights, else empty.
    """

    model_id: str
    version: str
    task: str
    architecture: str
    weights: str
    format: str | None
    sha256: str | None
    pinned: str | None
    source: str
    note: str

    def __str__(self) -> str:
        sha = f" sha256 {self.sha256}" if self.sha256 else ""
        pin = "pinned" if self.pinned else "unpinned"
        kind = f"{self.weights} ({self.format})" if self.format else self.weights
        note = f"  {self.note}" if self.note else ""
        return (
            f"{self.model_id} {self.version} [{self.task}, {self.architecture}]: "
            f"{kind}{sha}, {pin}{note}"
        )


def list_models(registry: ModelRegistry, models_dir: Path) -> list[ModelRow]:
    """Known models and their installed weights, sorted by id.

    Reads records only; ``models verify`` (:func:`models.weights.verify_weights`)
    re-hashes. Never raises for one model's bad record: the row says so.
    """
    rows = []
    for manifest in registry.manifests():
        try:
            info = installed_weights(manifest, models_dir)
            kind = info.kind if info else NOT_INSTALLED
        except WeightsError as exc:
            info, kind = None, f"invalid record: {exc}"
        rows.append(
            ModelRow(
                manifest.id,
                manifest.version,
                manifest.task,
                manifest.architecture or "onnx",
                kind,
                info.format if info else None,
                info.sha256 if info else None,
                manifest.weights.sha256,
                registry.source(manifest.id),
                UNTRAINED_NOTICE if info and not info.is_real else "",
            )
        )
    return rows
