"""What a report is built from: findings of one analysis, and the analysis around them.

An *analysis* is one model run on one study (one generation). Its report input is
a :class:`ReportInput`: the findings, one per (scope unit, label), the headers of
every image the model ran on, the model's manifest and weights, and how the model
was served (backend, precision, device, engine key).

The manifest and weights are typed by the small protocols below, which name only
the fields a report needs: ``models.manifest.Manifest``, ``models.weights.WeightsInfo``,
``models.backends.LoadedModel`` and ``workers.pipeline.run.Outcome`` satisfy them, and
so do test stand-ins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

from dicom_node.core.errors import ReportError
from dicom_node.core.ledger import SkippedImage
from dicom_node.core.uids import derived_uid

Scope = Literal["image", "series", "study"]
"""Aggregation scope: one finding per image, per series, or per study and label."""

TOLERANCE = 1e-6  # float32 rounding allowed outside [0, 1] before a probability is refused
DEFAULT_PRECISION = "fp32"
"""Precision reported for a model that does not say (a backend of before issue 7, a stand-in)."""


class CodeLike(Protocol):
    """A coded concept: code value, coding scheme designator, code meaning."""

    @property
    def value(self) -> str: ...  # noqa: D102
    @property
    def scheme(self) -> str: ...  # noqa: D102
    @property
    def meaning(self) -> str: ...  # noqa: D102


class LabelLike(Protocol):
    """A model output: name, coded finding, operating threshold, shown in reports or not."""

    @property
    def name(self) -> str: ...  # noqa: D102
    @property
    def code(self) -> CodeLike: ...  # noqa: D102
    @property
    def threshold(self) -> float: ...  # noqa: D102
    @property
    def report(self) -> bool: ...  # noqa: D102


class ModelCardLike(Protocol):
    """Where a reader learns what the model is for and where it fails."""

    @property
    def intended_use(self) -> str: ...  # noqa: D102
    @property
    def reference(self) -> str: ...  # noqa: D102
    @property
    def url(self) -> str | None: ...  # noqa: D102


class AggregationLike(Protocol):
    """How per-image outputs become findings."""

    @property
    def scope(self) -> str: ...  # noqa: D102


class ManifestLike(Protocol):
    """The manifest fields a report uses."""

    @property
    def id(self) -> str: ...  # noqa: D102
    @property
    def name(self) -> str: ...  # noqa: D102
    @property
    def version(self) -> str: ...  # noqa: D102
    @property
    def labels(self) -> Sequence[LabelLike]: ...  # noqa: D102
    @property
    def aggregation(self) -> AggregationLike: ...  # noqa: D102
    @property
    def model_card(self) -> ModelCardLike | None: ...  # noqa: D102


class WeightsLike(Protocol):
    """The weights fields a report uses."""

    @property
    def model_id(self) -> str: ...  # noqa: D102
    @property
    def kind(self) -> str: ...  # noqa: D102
    @property
    def sha256(self) -> str: ...  # noqa: D102


@dataclass(frozen=True)
class Finding:
    """One label's result for one scope unit (an image, a series, or the study).

    Attributes
    ----------
    label : LabelLike
        The manifest label (code and operating threshold).
    probability : float
        Model output after activation and aggregation, in [0, 1] (unit "1").
    sources : tuple of Dataset
        Headers (pixel data not needed) of the images that gave ``probability``:
        one for ``max`` (for series scope the slice that drove it), every image of
        the scope unit for ``mean``. Each must be among the report's evidence or
        is added to it.
    scope_key : str or None
        Series Instance UID for series scope, SOP Instance UID for image scope,
        None for study scope.
    """

    label: LabelLike
    probability: float
    sources: tuple[Dataset, ...]
    scope_key: str | None = None

    @property
    def present(self) -> bool:
        """Whether the probability reaches the label's operating threshold."""
        return self.probability >= self.label.threshold


@dataclass(frozen=True)
class ReportInput:
    """Everything one analysis's report is built from.

    Attributes
    ----------
    study_uid : str
        Study Instance UID of the analysed study.
    generation : int
        Ledger generation of the study (part of the report UIDs).
    manifest : ManifestLike
        The model's manifest (id, name, version, labels, aggregation, model card).
    weights : WeightsLike
        The weights that produced the findings (model id, kind "real" or
        "untrained-demo", sha256 as 64 lowercase hex digits).
    backend : str
        Inference backend that ran the model, e.g. "onnxruntime" or "torch".
    findings : sequence of Finding
        One per (scope unit, label), in the order the report lists them. Labels
        with ``report: false`` are accepted and left out of the report.
    evidence : sequence of Dataset
        Headers of every image the model ran on (one or more series of the study).
    skipped : sequence of SkippedImage
        Images of the analysis that were not analysed, each with its reason (no
        values); the report names them.
    precision : str
        What the backend computed in: "fp32" (default), "fp16", "bf16" or "int8".
    engine_key : str
        Key of the compiled artefact that ran (a TensorRT engine, an ONNX export);
        "" when there is none (eager PyTorch), and then not reported.
    device : str
        "cuda" or "cpu"; "" when unknown, and then not reported.
    """

    study_uid: str
    generation: int
    manifest: ManifestLike
    weights: WeightsLike
    backend: str
    findings: Sequence[Finding]
    evidence: Sequence[Dataset]
    skipped: Sequence[SkippedImage] = ()
    precision: str = DEFAULT_PRECISION
    engine_key: str = ""
    device: str = ""

    @property
    def is_demo(self) -> bool:
        """Whether the weights are anything but real (trained, imported) weights."""
        return self.weights.kind != "real"

    @property
    def scope(self) -> str:
        """The manifest's aggregation scope ("image", "series" or "study")."""
        return self.manifest.aggregation.scope

    def reported(self) -> list[Finding]:
        """The findings to report: labels with ``report: false`` left out, in input order.

        Raises
        ------
        ReportError
            If a probability is not a finite number in [0, 1], a scope key does not
            fit the scope, a label is not the manifest's, or a (scope unit, label)
            pair comes twice.
        """
        names = {label.name for label in self.manifest.labels}
        seen: set[tuple[str | None, str]] = set()
        kept: list[Finding] = []
        for finding in self.findings:
            name = finding.label.name
            if name not in names:
                raise ReportError(f"label {name!r} is not in manifest {self.manifest.id}")
            p = finding.probability
            if not (math.isfinite(p) and -TOLERANCE <= p <= 1 + TOLERANCE):
                raise ReportError(f"label {name!r}: probability {p!r} is not in [0, 1]")
            if (finding.scope_key is None) != (self.scope == "study"):
                raise ReportError(f"label {name!r}: scope key does not fit {self.scope} scope")
            if not finding.sources:
                raise ReportError(f"label {name!r}: no source image")
            key = (finding.scope_key, name)
            if key in seen:
                raise ReportError(f"label {name!r} is reported twice for one scope unit")
            seen.add(key)
            if finding.label.report:
                kept.append(finding)
        return kept


class ImageLike(Protocol):
    """An image of an analysis (``workers.pipeline.order.Image``)."""

    @property
    def header(self) -> Dataset: ...  # noqa: D102


class AggregateLike(Protocol):
    """One finding unit's probabilities (``workers.pipeline.aggregate.Aggregate``)."""

    @property
    def scope_key(self) -> str | None: ...  # noqa: D102
    @property
    def probabilities(self) -> npt.NDArray[np.float32]: ...  # noqa: D102
    @property
    def sources(self) -> Sequence[Sequence[ImageLike]]: ...  # noqa: D102


class OutcomeLike(Protocol):
    """What an analysis produced (``workers.pipeline.run.Outcome``)."""

    @property
    def aggregates(self) -> Sequence[AggregateLike]: ...  # noqa: D102
    @property
    def images(self) -> Sequence[ImageLike]: ...  # noqa: D102
    @property
    def skipped(self) -> Sequence[SkippedImage]: ...  # noqa: D102


class ModelLike(Protocol):
    """A loaded model (``models.backends.LoadedModel``).

    ``precision``, ``engine_key`` and ``device`` (see :class:`Serving`) are read
    when the model has them (:func:`serving_of`); a model without them still fits.
    """

    @property
    def manifest(self) -> ManifestLike: ...  # noqa: D102
    @property
    def weights(self) -> WeightsLike: ...  # noqa: D102
    @property
    def backend(self) -> str: ...  # noqa: D102


@dataclass(frozen=True)
class Serving:
    """Backend, precision, engine key and device of a model, as its reports record them.

    Attributes
    ----------
    backend : str
        "tensorrt", "torch" or "onnxruntime" (anything else is written as is).
    precision : str
        "fp32", "fp16", "bf16" or "int8".
    engine_key : str
        Compiled artefact's key, "" for none.
    device : str
        "cuda" or "cpu", "" when unknown.
    """

    backend: str
    precision: str = DEFAULT_PRECISION
    engine_key: str = ""
    device: str = ""


def serving_of(model: ModelLike) -> Serving:
    """Read how ``model`` is served; attributes it lacks take the defaults of :class:`Serving`.

    Parameters
    ----------
    model : ModelLike
        ``models.backends.LoadedModel`` (``backend``, ``precision``, ``engine_key``,
        ``device``) or a stand-in with ``backend`` only.

    Returns
    -------
    Serving
    """
    return Serving(
        backend=str(model.backend),
        precision=str(getattr(model, "precision", "") or DEFAULT_PRECISION),
        engine_key=str(getattr(model, "engine_key", "") or ""),
        device=str(getattr(model, "device", "") or ""),
    )


def report_input(
    outcome: OutcomeLike, model: ModelLike, study_uid: str, generation: int
) -> ReportInput:
    """Turn an analysis outcome into the input of every report profile.

    Parameters
    ----------
    outcome : OutcomeLike
        Aggregates (one per scope unit; ``probabilities`` ``(L,) float32`` in manifest
        label order, ``sources[i]`` the images behind label ``i``) and the images used.
    model : ModelLike
        Manifest, weights and backend name; precision, engine key and device when
        the model has them (:func:`serving_of`).
    study_uid : str
        Study Instance UID.
    generation : int
        Ledger generation of the study.

    Returns
    -------
    ReportInput
        One finding per (aggregate, label), labels with ``report: false`` included
        (the builders leave them out); evidence = every image used; the skipped
        images with their reasons.

    Raises
    ------
    ReportError
        If an aggregate's probabilities do not have one value per manifest label.
    """
    labels = list(model.manifest.labels)
    serving = serving_of(model)
    findings: list[Finding] = []
    for unit in outcome.aggregates:
        if len(unit.probabilities) != len(labels) or len(unit.sources) != len(labels):
            raise ReportError(
                f"model {model.manifest.id}: {len(unit.probabilities)} outputs "
                f"for {len(labels)} labels"
            )
        for i, label in enumerate(labels):
            sources = tuple(image.header for image in unit.sources[i])
            findings.append(Finding(label, float(unit.probabilities[i]), sources, unit.scope_key))
    return ReportInput(
        study_uid=study_uid,
        generation=generation,
        manifest=model.manifest,
        weights=model.weights,
        backend=serving.backend,
        findings=findings,
        evidence=[image.header for image in outcome.images],
        skipped=list(outcome.skipped),
        precision=serving.precision,
        engine_key=serving.engine_key,
        device=serving.device,
    )


def report_uids(inp: ReportInput, profile: str) -> tuple[str, str]:
    """Deterministic (Series Instance UID, SOP Instance UID) of an analysis's report.

    Derived (:func:`dicom_node.core.uids.derived_uid`) from the study UID, generation,
    model id and version, weights sha256 and report profile, so that a task run twice
    produces the same instance and a PACS keeps one copy.
    """
    parts = (
        inp.study_uid,
        str(inp.generation),
        inp.manifest.id,
        inp.manifest.version,
        inp.weights.sha256,
        profile,
    )
    return derived_uid(*parts, "series"), derived_uid(*parts, "instance")
