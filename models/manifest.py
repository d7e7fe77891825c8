"""Model manifests: what a model takes, gives, applies to, and where its weights come from.

A manifest is a YAML file in ``models/manifests/`` validated by :class:`Manifest`.
The :class:`ModelRegistry` object holds the loaded manifests (no module-global
mutable registry).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dicom_node.core.errors import ManifestError

MANIFEST_DIR = Path(__file__).with_name("manifests")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CodedConcept(_Strict):
    """A coded concept (PS3.3 Table 8.8-1): code value, scheme designator, meaning."""

    value: str = Field(max_length=16)
    scheme: str = Field(max_length=16)
    meaning: str = Field(max_length=64)


class Label(_Strict):
    """One output of a classifier: its coded finding and operating threshold."""

    name: str
    code: CodedConcept
    threshold: float = Field(gt=0, lt=1, description="Present when probability >= threshold.")


class WeightsSpec(_Strict):
    """Where the published weights are and how they are pinned."""

    url: str
    filename: str
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    format: Literal["torch-pickled-module"] = "torch-pickled-module"
    license: str


class InputSpec(_Strict):
    """The tensor the model takes."""

    name: str
    shape: tuple[int, int, int]  # (C, H, W); N is dynamic
    dtype: Literal["float32"]
    value_range: tuple[float, float]
    preprocessing: Literal["xrv"]


class OutputSpec(_Strict):
    """The tensor the model gives."""

    name: str
    activation: Literal["sigmoid"]


class Applicability(_Strict):
    """Which instances the model may be run on (matched case-insensitively)."""

    modalities: list[str]
    body_parts: list[str]
    view_positions: list[str] = Field(default_factory=list, description="Empty: any view.")
    photometric_interpretations: list[str] = ["MONOCHROME1", "MONOCHROME2"]


class Manifest(_Strict):
    """A model's manifest."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    name: str = Field(max_length=64)
    version: str = Field(max_length=16)
    architecture: Literal["densenet121"]
    upstream: str
    reference: str
    weights: WeightsSpec
    input: InputSpec
    output: OutputSpec
    applicability: Applicability
    labels: list[Label]

    @model_validator(mode="after")
    def _unique_labels(self) -> Manifest:
        names = [label.name for label in self.labels]
        if len(set(names)) != len(names):
            raise ValueError("label names must be unique")
        return self

    @property
    def label_names(self) -> list[str]:
        """Label names in output order."""
        return [label.name for label in self.labels]

    def applies_to(self, ds: Any) -> tuple[bool, str]:
        """Tell whether this model may run on an instance.

        Parameters
        ----------
        ds : pydicom.Dataset
            The instance's header (pixel data not needed).

        Returns
        -------
        (bool, str)
            Whether it applies, and why not (empty when it does).
        """
        spec = self.applicability

        def value(keyword: str) -> str:
            return str(ds.get(keyword, "") or "").strip().upper()

        checks = [
            ("Modality", spec.modalities),
            ("BodyPartExamined", spec.body_parts),
            ("PhotometricInterpretation", spec.photometric_interpretations),
        ]
        if spec.view_positions:
            checks.append(("ViewPosition", spec.view_positions))
        for keyword, allowed in checks:
            if value(keyword) not in {a.upper() for a in allowed}:
                return False, f"{keyword} {value(keyword) or '(none)'} not in {allowed}"
        return True, ""


def load_manifest(path: Path) -> Manifest:
    """Load and validate one manifest file.

    Raises
    ------
    ManifestError
        If the file is missing, not YAML, or does not validate.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return Manifest.model_validate(data)
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc.strerror}") from exc
    except (yaml.YAMLError, ValidationError) as exc:
        raise ManifestError(f"invalid manifest {path.name}: {exc}") from exc


class ModelRegistry:
    """The manifests known to this node, by id.

    Parameters
    ----------
    manifests : iterable of Manifest
        Manifests to hold.
    """

    def __init__(self, manifests: Iterable[Manifest]) -> None:
        self._by_id: dict[str, Manifest] = {}
        for manifest in manifests:
            if manifest.id in self._by_id:
                raise ManifestError(f"duplicate model id {manifest.id}")
            self._by_id[manifest.id] = manifest

    @classmethod
    def from_directory(cls, directory: Path = MANIFEST_DIR) -> ModelRegistry:
        """Load every ``*.yaml`` manifest of a directory."""
        return cls(load_manifest(p) for p in sorted(directory.glob("*.yaml")))

    def get(self, model_id: str) -> Manifest:
        """Return a manifest by id.

        Raises
        ------
        ManifestError
            If no manifest has that id.
        """
        try:
            return self._by_id[model_id]
        except KeyError:
            raise ManifestError(
                f"unknown model {model_id!r}; known: {sorted(self._by_id)}"
            ) from None

    def ids(self) -> list[str]:
        """Known model ids."""
        return sorted(self._by_id)
