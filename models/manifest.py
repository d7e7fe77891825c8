"""Model manifests: what a model is, takes, gives, applies to, and where its weights come from.

A model is a YAML file, not code. Shipped manifests live in ``models/manifests/``;
a site adds its own under ``<models_dir>/manifests/`` (see
:class:`models.registry.ModelRegistry`). Each file is validated by
:class:`Manifest` (pydantic, frozen, unknown keys refused). Following MONAI
bundles, a manifest declares its input and output tensors (shape, layout,
dtype, value range, channels) and pins its weights by URI and sha256.

Schema (keys of the YAML file)::

    id, name, version, task: classification
    architecture: <registry key> | null        null: the weights are an ONNX file
    architecture_params: {in_channels: 3, ...}  passed to the architecture's builder
    weights: {uri, filename, sha256, format: torch-pickled-module|safetensors|onnx, license}
    input: {name, layout: NCHW|NHWC, shape: [C,H,W] or [H,W,C], dtype: float32,
            value_range: [lo, hi], channels: [...]}
    preprocessing: [{step: <key>, ...}, ...]     vocabulary: models.preprocessing
    output: {name, kind: class_scores, activation: sigmoid|softmax|none}
    aggregation: {scope: image|series|study, reduce: max|mean, slice_order: patient_axis|none}
    labels: [{name, code: {value, scheme, meaning}, threshold, report: true,
              finding_site: {value, scheme, meaning} | null}]
    finding_site: {value, scheme, meaning} | null   default anatomic site of every label
    routing: {rules: [{modalities, body_parts, view_positions, sop_classes,
                       photometric_interpretations, calling_aes, study_description,
                       series_description, attributes}]}
    serving: {max_batch: 32, max_delay_ms: 5, priority: routine|stat,
              tolerance: {fp32, fp16, bf16, int8}}     batching and verification
    model_card: {intended_use, training_data, limitations, subgroup_caveats, reference, url,
                 output_interpretation}
    upstream, reference
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dicom_node.core.errors import ManifestError
from models.preprocessing import validate_steps

MANIFEST_DIR = Path(__file__).with_name("manifests")
"""Directory of the manifests shipped inside the package."""

WeightsFormat = Literal["torch-pickled-module", "safetensors", "onnx"]
Activation = Literal["sigmoid", "softmax", "none"]
_SHA256 = r"^[0-9a-f]{64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CodedConcept(_Strict):
    """A coded concept (PS3.3 Table 8.8-1): code value, scheme designator, meaning.

    SNOMED CT (``SCT``) where the concept exists in DICOM's code tables (PS3.16,
    as shipped in ``pydicom.sr.codedict``); otherwise the local scheme
    ``99DCMNODE`` whose meaning is the upstream label text.
    """

    value: str = Field(min_length=1, max_length=16)
    scheme: str = Field(min_length=1, max_length=16)
    meaning: str = Field(min_length=1, max_length=64)


class Label(_Strict):
    """One output of a classifier: its coded finding and operating threshold.

    ``threshold`` is on the activated output (a probability for sigmoid and
    softmax): the finding is Present when the value is ``>= threshold``.
    ``report: false`` keeps a class (e.g. softmax "normal") out of the SR.
    ``finding_site``: the anatomic location of the finding, written as the TID 1501
    "Finding Site" (SCT 363698007) of the label's measurement group (PS3.16; a
    SNOMED CT anatomic code, e.g. from CID 4031 "Common Anatomic Regions"); when
    null the manifest's ``finding_site`` applies (:meth:`Manifest.finding_site_of`).
    """

    name: str = Field(min_length=1, max_length=64)
    code: CodedConcept
    threshold: float
    report: bool = True
    finding_site: CodedConcept | None = None


class WeightsSpec(_Strict):
    """Where the published weights are and how they are pinned.

    ``uri`` is an ``http(s)://`` URL, a ``file://`` URI or a path relative to
    ``<models_dir>``; null when none is published (demo weights only, or bring
    your own with ``models import``). A non-null ``sha256`` pins the file: the
    node refuses any other file, at import and at load.
    """

    uri: str | None = None
    filename: str | None = None
    sha256: str | None = Field(None, pattern=_SHA256)
    format: WeightsFormat = "torch-pickled-module"
    license: str = "unknown"


class InputSpec(_Strict):
    """The tensor the model takes (one per image; N, the batch axis, is dynamic).

    ``shape`` leaves N out and follows ``layout``: ``[C, H, W]`` for NCHW,
    ``[H, W, C]`` for NHWC. ``channels`` names each channel.
    """

    name: str = Field(min_length=1)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    shape: tuple[int, int, int]
    dtype: Literal["float32"] = "float32"
    value_range: tuple[float, float]
    channels: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> InputSpec:
        if min(self.shape) < 1:
            raise ValueError(f"input.shape {list(self.shape)} must be positive")
        low, high = self.value_range
        if not low < high:
            raise ValueError(f"input.value_range [{low}, {high}] must have low < high")
        if len(self.channels) != self.num_channels:
            raise ValueError(
                f"input.channels has {len(self.channels)} names but shape {list(self.shape)} "
                f"({self.layout}) has {self.num_channels} channels"
            )
        return self

    @property
    def num_channels(self) -> int:
        """Channels C, from ``shape`` and ``layout``."""
        return self.shape[0] if self.layout == "NCHW" else self.shape[2]

    @property
    def spatial(self) -> tuple[int, int]:
        """``(H, W)`` in pixels."""
        return (self.shape[1], self.shape[2]) if self.layout == "NCHW" else self.shape[:2]

    @property
    def chw(self) -> tuple[int, int, int]:
        """``(C, H, W)``: the per-image shape preprocessing produces."""
        height, width = self.spatial
        return (self.num_channels, height, width)


class OutputSpec(_Strict):
    """The tensor the model gives and how its raw values become scores.

    Backends return raw outputs (logits); ``activation`` is applied once, in
    numpy, by :mod:`models.backends`. ``kind`` is ``class_scores`` today
    (``(N, L)``, one column per label); segmentation will add a mask kind.
    """

    name: str = Field(min_length=1)
    kind: Literal["class_scores"] = "class_scores"
    activation: Activation


class Aggregation(_Strict):
    """How per-image scores become the reported ones.

    ``scope``: one result per image, per series or per study; ``reduce``: how
    images' scores combine within the scope; ``slice_order``: sort a series'
    slices along the patient axis (Image Position and Orientation) first.
    """

    scope: Literal["image", "series", "study"] = "image"
    reduce: Literal["max", "mean"] = "max"
    slice_order: Literal["patient_axis", "none"] = "none"


class RoutingRule(_Strict):
    """One applicability rule; every non-empty field must match (logical AND).

    Lists match a header value case-insensitively; an empty list accepts any
    value. ``study_description`` / ``series_description`` are regular
    expressions searched (``re.search``, IGNORECASE) in the description.
    ``attributes`` maps further DICOM keywords (e.g. ``FilterType``) to a
    regular expression searched in the value's text.
    """

    modalities: list[str] = Field(default_factory=list)
    body_parts: list[str] = Field(default_factory=list)
    view_positions: list[str] = Field(default_factory=list)
    sop_classes: list[str] = Field(default_factory=list)
    photometric_interpretations: list[str] = Field(default_factory=list)
    calling_aes: list[str] = Field(default_factory=list)
    study_description: str | None = None
    series_description: str | None = None
    attributes: dict[str, str] = Field(default_factory=dict)

    @field_validator("study_description", "series_description")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc
        return value

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, value: dict[str, str]) -> dict[str, str]:
        from pydicom.datadict import tag_for_keyword

        for keyword, pattern in value.items():
            if tag_for_keyword(keyword) is None:
                raise ValueError(f"attributes: {keyword!r} is not a DICOM keyword")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"attributes.{keyword}: invalid regex {pattern!r}: {exc}") from exc
        return value


class Routing(_Strict):
    """Applicability: the model runs on an instance when any rule matches it."""

    rules: list[RoutingRule] = Field(min_length=1)


class Tolerance(_Strict):
    """Largest absolute difference of an activated score from the reference, by precision.

    ``dicom-node models verify`` compares every available backend with the
    reference (PyTorch FP32 eager on the CPU; ONNX Runtime on the CPU for
    ONNX-only models) on the same reference inputs. Reduced precisions get
    looser bounds.
    """

    fp32: float = Field(default=1e-4, gt=0, le=1)
    fp16: float = Field(default=2e-2, gt=0, le=1)
    bf16: float = Field(default=5e-2, gt=0, le=1)
    int8: float = Field(default=1e-1, gt=0, le=1)

    def for_precision(self, precision: str) -> float:
        """The bound for ``fp32``, ``fp16``, ``bf16`` or ``int8``."""
        return float(getattr(self, precision))


class Serving(_Strict):
    """How a worker serves the model.

    ``max_batch`` images at most per backend call, collected across studies for
    at most ``max_delay_ms`` after the first one waits (see
    :class:`workers.batching.DynamicBatcher`). ``priority: stat`` makes every
    study of this model STAT. ``tolerance``: see :class:`Tolerance`.
    """

    max_batch: int = Field(default=32, ge=1, le=1024)
    max_delay_ms: float = Field(default=5.0, ge=0, le=10_000)
    priority: Literal["routine", "stat"] = "routine"
    tolerance: Tolerance = Field(default_factory=Tolerance)


class ModelCard(_Strict):
    """What the model is for and where it falls short (shown by ``models list``)."""

    intended_use: str
    training_data: str
    limitations: str
    subgroup_caveats: str
    reference: str
    url: str | None = None
    output_interpretation: str = ""


class Manifest(_Strict):
    """A model's manifest: one YAML file in ``manifests/`` (schema in the module docstring).

    Raises
    ------
    pydantic.ValidationError
        From :meth:`model_validate`; :func:`load_manifest` turns it into
        :class:`~dicom_node.core.errors.ManifestError`.
    """

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    name: str = Field(max_length=64)
    version: str = Field(max_length=16)
    task: Literal["classification"] = "classification"
    architecture: str | None
    architecture_params: dict[str, int | float | str | bool] = Field(default_factory=dict)
    weights: WeightsSpec
    input: InputSpec
    preprocessing: list[dict[str, Any]] = Field(min_length=1)
    output: OutputSpec
    aggregation: Aggregation = Aggregation()
    labels: list[Label] = Field(min_length=1)
    routing: Routing
    serving: Serving = Field(default_factory=Serving)
    model_card: ModelCard
    upstream: str
    reference: str
    finding_site: CodedConcept | None = None
    """Anatomic site of every label that names none (e.g. SCT 39607008 "Lung");
    reports write it as the TID 1501 Finding Site. Null: no finding site."""

    @field_validator("preprocessing")
    @classmethod
    def _steps(cls, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, step in enumerate(steps):
            if not isinstance(step.get("step"), str):
                raise ValueError(f"preprocessing[{i}] has no 'step' key")
        validate_steps(steps)
        return steps

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.architecture is None and self.weights.format != "onnx":
            raise ValueError("architecture is null, so weights.format must be 'onnx'")
        names = [label.name for label in self.labels]
        if len(set(names)) != len(names):
            raise ValueError(f"label names must be unique: {names}")
        if self.output.activation == "softmax" and len(self.labels) < 2:
            raise ValueError("a softmax output needs one label per class (at least 2)")
        if self.output.activation != "none":
            for label in self.labels:
                if not 0.0 < label.threshold < 1.0:
                    raise ValueError(
                        f"label {label.name}: threshold {label.threshold} must be in (0, 1) "
                        f"for a {self.output.activation} output"
                    )
        if not any(label.report for label in self.labels):
            raise ValueError("at least one label must have report: true")
        return self

    @property
    def label_names(self) -> list[str]:
        """Label names in output order (column ``j`` of the scores is ``labels[j]``)."""
        return [label.name for label in self.labels]

    def finding_site_of(self, label: Label) -> CodedConcept | None:
        """The label's finding site, else the manifest's; None when neither names one."""
        return label.finding_site or self.finding_site

    @property
    def weights_pinned(self) -> bool:
        """True when the manifest pins a sha256 for its weights."""
        return self.weights.sha256 is not None


def validation_problems(exc: ValidationError, top: str) -> str:
    """One line naming each invalid field and why: ``"input.shape: ...; labels: ..."``.

    Parameters
    ----------
    exc : pydantic.ValidationError
    top : str
        The name of a problem with the whole object rather than a field.
    """
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or top}: {err['msg']}" for err in exc.errors()
    )


def parse_manifest(data: Any, source: str = "<manifest>") -> Manifest:
    """Validate already-parsed manifest data.

    Parameters
    ----------
    data : object
        The YAML document (a mapping).
    source : str
        Name used in error texts (a file name).

    Raises
    ------
    ManifestError
        Naming each invalid field and why.
    """
    if not isinstance(data, dict):
        raise ManifestError(
            f"invalid manifest {source}: expected a mapping, got {type(data).__name__}"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problems = validation_problems(exc, "(top)")
        raise ManifestError(f"invalid manifest {source}: {problems}") from exc
    except ValueError as exc:  # a preprocessing validator raising outside pydantic's wrapping
        raise ManifestError(f"invalid manifest {source}: {exc}") from exc


def load_manifest(path: Path) -> Manifest:
    """Load and validate one manifest file.

    Parameters
    ----------
    path : Path
        A ``.yaml`` file.

    Returns
    -------
    Manifest

    Raises
    ------
    ManifestError
        If the file is missing, not YAML, or does not validate (the text names
        the file, each invalid field and the reason).
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc.strerror}") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ManifestError(f"invalid manifest {path.name}: not YAML: {exc}") from exc
    return parse_manifest(data, path.name)
